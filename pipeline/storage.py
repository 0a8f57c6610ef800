"""Local paths and s3:// URIs behind one small API, with atomic writes.

S3 goes through pyarrow's S3FileSystem. Credentials come from the standard AWS
chain (environment, profile, instance role) and are never read from config nor
logged. An S3-compatible endpoint comes from `AWS_ENDPOINT_URL`, which the CLI
sets from `--s3-endpoint` before Ray starts so every Ray process inherits it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import tempfile
import uuid
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import DataError

ENDPOINT_ENV = "AWS_ENDPOINT_URL"


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
    kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "http"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise DataError(f"S3 URI has no bucket: {uri!r}")
        return s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def _storage_error(action: str, uri: str, exc: Exception) -> DataError:
    text = str(exc)
    if is_s3(uri) and ("NoSuchBucket" in text or "NO_SUCH_BUCKET" in text or "bucket does not exist" in text.lower()):
        return DataError(f"cannot {action} {uri}: the bucket does not exist")
    denied = ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH",
              "SignatureDoesNotMatch", "HTTP response code: 403")
    if is_s3(uri) and any(marker in text for marker in denied):
        return DataError(f"cannot {action} {uri}: access denied (check the AWS credentials in your environment)")
    return DataError(f"cannot {action} {uri}: {text}")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise _storage_error("look up", uri, exc) from exc


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as exc:
        raise DataError(f"not found: {uri}") from exc
    except OSError as exc:
        if "not found" in str(exc).lower() or "NoSuchKey" in str(exc):
            raise DataError(f"not found: {uri}") from exc
        raise _storage_error("read", uri, exc) from exc


def write_temp_beside(path: str, data: bytes) -> str:
    """Write `data` to a new temp file in `path`'s folder (same filesystem, so it can be renamed or linked in)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a local temp file renamed into place, or one S3 PUT (atomic per object)."""
    fs, path = resolve(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = write_temp_beside(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            with fs.open_output_stream(path) as stream:
                stream.write(data)
    except OSError as exc:
        raise _storage_error("write", uri, exc) from exc


def create_s3_object(uri: str, data: bytes) -> bool:
    """PUT `data` at an s3:// URI only if no object is there (`If-None-Match: *`); False if one already was.

    The check and the write are one request, so of two writers racing for the same key exactly one
    wins (pyarrow's S3 filesystem cannot send the header, hence boto3).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parsed = urlparse(uri)
    client = boto3.client("s3", endpoint_url=os.environ.get(ENDPOINT_ENV) or None,
                          region_name=os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")))
    try:
        client.put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            return False
        raise _storage_error("write", uri, exc) from exc
    except BotoCoreError as exc:
        raise _storage_error("write", uri, exc) from exc
    return True


def create_once(uri: str, data: bytes) -> bool:
    """Create a file or object with `data` unless one is already there (then False), race-free: of two
    writers exactly one wins, and a reader never sees part of the bytes."""
    if is_s3(uri):
        return create_s3_object(uri, data)
    _, path = resolve(uri)
    try:
        return _publish_local_once(path, data)
    except OSError as exc:
        raise _storage_error("write", uri, exc) from exc


def _publish_local_once(path: str, data: bytes) -> bool:
    """Create `path` with `data` unless it exists; atomic, so two writers cannot both win.

    The bytes go to a temp file first, then os.link publishes it under the final
    name: link() fails if the name is taken, where rename() would replace it.
    """
    tmp = write_temp_beside(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        return _create_exclusive(path, data)
    finally:
        os.unlink(tmp)


# Filesystems without hard links (some network and FUSE mounts) answer link() with one of these.
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)


def _create_exclusive(path: str, data: bytes) -> bool:
    """Fallback: O_EXCL still refuses an existing name, but a reader may briefly see a partial file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of the files directly or recursively under `uri` ending with `suffix`, sorted."""
    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise _storage_error("list", uri, exc) from exc
    rels = sorted(posixpath.relpath(i.path, path) if is_s3(uri) else os.path.relpath(i.path, path)
                  for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))
    return [join(uri, rel) for rel in rels]


def delete_file(uri: str) -> None:
    """Remove one file or S3 object; a missing one is not an error."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _storage_error("delete", uri, exc) from exc


def delete_tree(uri: str) -> None:
    """Remove a folder (or S3 prefix) and everything under it; nothing there is not an error."""
    fs, path = resolve(uri)
    try:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)
    except OSError as exc:
        raise _storage_error("delete", uri, exc) from exc


def ensure_bucket(uri: str) -> None:
    """Fail early with a clear message if an s3:// URI's bucket is missing or unreachable."""
    if not is_s3(uri):
        return
    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise _storage_error("reach", uri, exc) from exc
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"cannot use {uri}: the bucket {bucket!r} does not exist")


def unique_tmp_name(prefix: str = "tmp") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
