"""`python -m sweep`: the `sweep` command line."""

from sweep.cli import app

app(prog_name="sweep")
