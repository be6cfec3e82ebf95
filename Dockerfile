# One image for both roles. The server needs no torch: build it with EXTRAS="" (the default);
# build workers with EXTRAS="[worker]".
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service service
COPY worker worker
COPY models models
COPY examples examples
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS}"
ENV SWEEP_DATA_DIR=/data
EXPOSE 8642
CMD ["sweep", "server", "--host", "0.0.0.0", "--port", "8642"]
