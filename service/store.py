"""Where artifacts' bytes live: a directory (`file://`, the default) or an S3-compatible
bucket (`s3://bucket/prefix`, through boto3).

A store only keeps bytes under keys; SQL keeps what each object is (sweep_artifacts: its key,
size, sha256 and kind). A key is written once: a replaced artifact gets a new key, so a reader
of the old one never sees half of the new one, and an upload that fails leaves nothing behind.
Nothing here holds a whole object in memory: writes go to a file first, reads are chunked.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

CHUNK = 1 << 20


@dataclass(frozen=True)
class Stored:
    size: int
    sha256: str


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: datetime


class Store(Protocol):
    url: str

    def staging(self) -> Path:
        """The folder uploads are received into before they are put."""

    def put_file(self, key: str, path: Path) -> None:
        """Keep `path`'s content under `key` (the file may be moved away)."""

    def open(self, key: str) -> BinaryIO:
        """The object's bytes, to read in chunks; FileNotFoundError when it is missing."""

    def delete(self, key: str) -> None:
        """Forget the object; a missing one is not an error."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """The object's size, or None when it is missing."""

    def listing(self, prefix: str = "") -> Iterator[Listed]:
        """Every object under `prefix`, in no particular order."""

    def presigned_get(self, key: str, seconds: int) -> str | None:
        """A URL that lets its holder GET one object directly, or None when this store has
        no such thing (a directory: everything passes through the API)."""

    def presigned_put(
        self, key: str, seconds: int, sha256: str
    ) -> tuple[str, dict[str, str]] | None:
        """A URL and the headers to PUT one object with directly (the store checks the
        sha256 where it can), or None."""

    def checksum(self, key: str) -> str | None:
        """The sha256 the store computed of an object, where it keeps one (hex)."""


class Incoming:
    """An object being received: written to a temporary file, hashed as it arrives, and kept
    under its key only once it is whole and its checksum is right."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="incoming-", dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self.size = 0
        self.head = b""  # the first bytes, to check what kind of file it is

    def write(self, chunk: bytes) -> None:
        if len(self.head) < 16:
            self.head += chunk[: 16 - len(self.head)]
        self._file.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    def finish(self) -> Stored:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return Stored(self.size, self._digest.hexdigest())

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


def sha256_of(stream: BinaryIO) -> Stored:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return Stored(size, digest.hexdigest())


def chunks(stream: BinaryIO) -> Iterator[bytes]:
    """An object's bytes a chunk at a time, closing it at the end."""
    try:
        while chunk := stream.read(CHUNK):
            yield chunk
    finally:
        stream.close()


class FileStore:
    """Objects as files under a directory (a local disk or a shared file system)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = self.root.as_uri()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"artifact key {key!r} leaves the store")
        return path

    def staging(self) -> Path:
        """Where incoming objects are written: on the store's own file system, so keeping one
        is a rename."""
        return self.root / ".incoming"

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except OSError:  # another file system: copy, then rename into place
            with (
                open(path, "rb") as source,
                tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as copy,
            ):
                while chunk := source.read(CHUNK):
                    copy.write(chunk)
                copy.flush()
                os.fsync(copy.fileno())
            os.replace(copy.name, target)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        for parent in path.parents:  # empty folders go too
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def listing(self, prefix: str = "") -> Iterator[Listed]:
        for directory, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != ".incoming"]
            for name in files:
                path = Path(directory) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    stat = path.stat()
                    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                    yield Listed(key, stat.st_size, modified)

    def presigned_get(self, key: str, seconds: int) -> str | None:
        return None

    def presigned_put(
        self, key: str, seconds: int, sha256: str
    ) -> tuple[str, dict[str, str]] | None:
        return None

    def checksum(self, key: str) -> str | None:
        return None


class S3Store:
    """Objects in an S3 bucket, or any server that speaks its API (MinIO, Ceph, R2...):
    `endpoint` is that server's URL. Credentials come the usual boto3 ways (AWS_ACCESS_KEY_ID
    and AWS_SECRET_ACCESS_KEY, a profile, an instance role)."""

    def __init__(
        self, bucket: str, prefix: str, *, endpoint: str | None, region: str | None, spool: Path
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix, self.spool = bucket, prefix.strip("/"), spool
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"})
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint or None, region_name=region or None, config=config
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def staging(self) -> Path:
        """Incoming objects wait on local disk until whole, then go up as a multipart upload."""
        return self.spool

    def put_file(self, key: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        # Parts of 16 MiB, 4 at a time: the API process holds at most 64 MiB of an upload.
        transfer = TransferConfig(multipart_chunksize=16 * 2**20, max_concurrency=4)
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=transfer)
        path.unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(key) from exc
        body: BinaryIO = response["Body"]
        return body

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            found = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(found["ContentLength"])

    def listing(self, prefix: str = "") -> Iterator[Listed]:
        start = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=start):
            for item in page.get("Contents", []):
                yield Listed(item["Key"][strip:], int(item["Size"]), item["LastModified"])

    def presigned_get(self, key: str, seconds: int) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        url: str = self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=seconds
        )
        return url

    def presigned_put(
        self, key: str, seconds: int, sha256: str
    ) -> tuple[str, dict[str, str]] | None:
        # The checksum is signed into the URL: S3 refuses a body that does not match it.
        encoded = base64.b64encode(bytes.fromhex(sha256)).decode()
        params = {"Bucket": self.bucket, "Key": self._key(key), "ChecksumSHA256": encoded}
        url: str = self.client.generate_presigned_url(
            "put_object", Params=params, ExpiresIn=seconds
        )
        return url, {"x-amz-checksum-sha256": encoded}

    def checksum(self, key: str) -> str | None:
        found = self.client.head_object(
            Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
        )
        encoded = found.get("ChecksumSHA256")
        if not encoded or "-" in encoded:  # absent, or a multipart upload's checksum of parts
            return None
        return base64.b64decode(encoded).hex()


def open_store(
    url: str, *, endpoint: str | None = None, region: str | None = None, spool: Path
) -> FileStore | S3Store:
    """The store a SWEEP_ARTIFACTS URL names: file:///path or s3://bucket/prefix."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"SWEEP_ARTIFACTS={url!r}: an s3:// URL names a bucket")
        return S3Store(parsed.netloc, parsed.path, endpoint=endpoint, region=region, spool=spool)
    raise ValueError(f"SWEEP_ARTIFACTS={url!r}: use file:///path or s3://bucket/prefix")
