"""Local paths and s3:// URIs behind one small API, with atomic writes.

S3 goes through pyarrow's S3FileSystem. Credentials come from the standard AWS
chain (environment, profile, instance role) and are never read from config nor
logged. An S3-compatible endpoint comes from `AWS_ENDPOINT_URL`, which the CLI
sets from `--s3-endpoint` before Ray starts so every Ray process inherits it.

Failures come in two kinds. What a retry cannot fix (a missing key or bucket,
access denied, a corrupt file) is a DataError at once. What may pass (connection
resets and refusals, timeouts, 5xx, SlowDown) is retried:
- per request, by the AWS SDK inside pyarrow and by botocore, both in their
  `standard` mode: jittered exponential backoff (about 1 s doubling, capped at
  20 s), `AWS_MAX_ATTEMPTS` attempts (default 8: 35-55 s of trying). That
  covers resets, lost answers, throttling and stalls, even a read cut off mid-body;
- per call, here (`retrying`): 3 tries, 0.5-1 s then 1-2 s apart, for what the
  SDK gives up on at once. Measured through tests/faulty_s3_proxy.py: a 503 or 500
  answer to a GET smaller than its error body ends in INTERNAL_FAILURE "Failed to
  flush response stream", which the SDK does not retry (objects of a few hundred
  bytes: records, prepare's shard records, run identities).
If it still fails, StorageUnavailableError: not one of the project's own errors,
so Ray Train's `--max-failures` restarts the workers from their last checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import posixpath
import random
import re
import tempfile
import time
import uuid
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import ConfigError, DataError, StorageUnavailableError

ENDPOINT_ENV = "AWS_ENDPOINT_URL"
# The AWS SDKs' own setting (botocore reads it too): attempts per S3 request, the first included. Measured through
# tests/faulty_s3_proxy.py: pyarrow's default, 3, gave up after 1.3 s of resets; 8 kept trying for 34, 44 and 53 s.
ATTEMPTS_ENV = "AWS_MAX_ATTEMPTS"
DEFAULT_S3_ATTEMPTS = 8
CALL_TRIES = 3  # tries of a whole storage call (see `retrying`), each with the SDK's attempts per request
FIRST_PAUSE_S = 1.0  # before the second try; doubled before each next one, and jittered down by up to half


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_attempts() -> int:
    """Attempts per S3 request, from `AWS_MAX_ATTEMPTS` (default 8)."""
    raw = os.environ.get(ATTEMPTS_ENV, "").strip()
    if not raw:
        return DEFAULT_S3_ATTEMPTS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{ATTEMPTS_ENV}={raw!r}: attempts per S3 request must be a whole number, 1 or more")
    return int(raw)


def _region() -> str:
    return os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
    # A strategy per filesystem: the standard strategy's retry budget (a token bucket) is per instance, and one
    # shared by every filesystem of a long run could run dry and stop all retries.
    kwargs = {"region": _region(), "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s3_attempts())}
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


# What pyarrow's AWS SDK reports for failures a later attempt can get past: the network (resets, refusals,
# timeouts: NETWORK_CONNECTION), throttling, and the server's own errors (5xx; a HEAD's has no body, hence the
# status). Anything else, a missing key or bucket, access denied, a bad request, fails the same way every time.
TRANSIENT_S3_TEXT = re.compile(r"AWS Error (?:NETWORK_CONNECTION|SLOW_DOWN|THROTTLING|INTERNAL_FAILURE|"
                               r"SERVICE_UNAVAILABLE|REQUEST_TIMEOUT)\b|HTTP status (?:5\d\d|429)\b")
# The same for botocore's ClientError codes (its connection errors are transient by class, see is_transient).
TRANSIENT_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                      "RequestTimeout", "InternalError", "ServiceUnavailable", "BadGateway", "GatewayTimeout"}
# Local and mounted (NFS, FUSE) filesystems: network trouble, not a missing or forbidden file.
TRANSIENT_ERRNOS = {errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EHOSTUNREACH,
                    errno.ENETUNREACH, errno.ENETDOWN}


def is_transient(exc: BaseException) -> bool:
    """Whether a storage failure may pass if tried again later (see TRANSIENT_S3_TEXT)."""
    if type(exc).__module__.startswith("botocore"):
        from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

        if isinstance(exc, (BotoConnectionError, HTTPClientError)):  # resets, refusals, timeouts
            return True
        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return exc.response.get("Error", {}).get("Code") in TRANSIENT_S3_CODES or status >= 500 or status == 429
        return False
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    return bool(TRANSIENT_S3_TEXT.search(str(exc)))


def storage_error(action: str, uri: str, exc: Exception, tries: int = 1) -> Exception:
    """The error to raise for a failed storage call: StorageUnavailableError when it may pass (and was tried
    `tries` times), else a DataError that says what is wrong. Error texts never hold credentials (the SDKs'
    messages name the key, the bucket and the operation only)."""
    text = " ".join(str(exc).split())  # one line: Ray's root-cause summary takes the error's last line
    if is_transient(exc):
        attempts = f" of {s3_attempts()} attempts each" if is_s3(uri) else ""
        return StorageUnavailableError(f"cannot {action} {uri}: storage unavailable after {tries} "
                                       f"tr{'y' if tries == 1 else 'ies'}{attempts}: {text}")
    if isinstance(exc, FileNotFoundError) or "NoSuchKey" in text or "not found" in text.lower():
        return DataError(f"not found: {uri}")
    if is_s3(uri) and ("NoSuchBucket" in text or "NO_SUCH_BUCKET" in text or "bucket does not exist" in text.lower()):
        return DataError(f"cannot {action} {uri}: the bucket does not exist")
    denied = ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH",
              "SignatureDoesNotMatch", "HTTP response code: 403")
    if is_s3(uri) and any(marker in text for marker in denied):
        return DataError(f"cannot {action} {uri}: access denied (check the AWS credentials in your environment)")
    return DataError(f"cannot {action} {uri}: {text}")


def retrying(action: str, uri: str, call, errors: tuple = (OSError,)):
    """`call()`, tried again after a failure that may pass, up to CALL_TRIES times in all; a failure raises
    `storage_error`. The pauses are jittered, so workers that failed together do not all come back at once."""
    for number in itertools.count(1):
        try:
            return call()
        except errors as exc:
            if number >= CALL_TRIES or not is_transient(exc):
                raise storage_error(action, uri, exc, number) from exc
        time.sleep(FIRST_PAUSE_S * 2 ** (number - 1) * random.uniform(0.5, 1.0))


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return retrying("look up", uri, lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)

    def read() -> bytes:
        with fs.open_input_stream(path) as stream:
            return stream.read()

    return retrying("read", uri, read)


def file_sha256(uri: str) -> str:
    """The sha256 of a file's bytes (models and records: read whole)."""
    return hashlib.sha256(read_bytes(uri)).hexdigest()


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
    """Write atomically: a local temp file renamed into place, or one S3 upload (atomic per object)."""
    fs, path = resolve(uri)

    def write() -> None:
        if isinstance(fs, pafs.LocalFileSystem):
            _replace_local(path, data)
        else:
            with fs.open_output_stream(path) as stream:
                stream.write(data)

    retrying("write", uri, write)


def _replace_local(path: str, data: bytes) -> None:
    tmp = write_temp_beside(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def create_s3_object(uri: str, data: bytes) -> bool:
    """PUT `data` at an s3:// URI only if no object is there (`If-None-Match: *`); False if one already was.

    The check and the write are one request, so of two writers racing for the same key exactly one
    wins (pyarrow's S3 filesystem cannot send the header, hence boto3). A 412 after a retry (botocore's or
    ours) may meet this very write, stored by an earlier attempt whose answer was lost (measured through a
    proxy that cuts answers off): then the stored bytes decide, equal ones being this write's (or a racing
    writer's with the very same bytes: the same result either way).
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    client = boto3.client("s3", endpoint_url=os.environ.get(ENDPOINT_ENV) or None, region_name=_region(),
                          config=Config(retries={"mode": "standard", "total_max_attempts": s3_attempts()}))
    calls = itertools.count()

    def put() -> bool:
        first_call = next(calls) == 0
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise
            retried = not first_call or exc.response.get("ResponseMetadata", {}).get("RetryAttempts")
            return bool(retried) and client.get_object(Bucket=bucket, Key=key)["Body"].read() == data

    return retrying("write", uri, put, (ClientError, BotoCoreError))


def create_once(uri: str, data: bytes) -> bool:
    """Create a file or object with `data` unless one is already there (then False), race-free: of two
    writers exactly one wins, and a reader never sees part of the bytes."""
    if is_s3(uri):
        return create_s3_object(uri, data)
    _, path = resolve(uri)
    return retrying("write", uri, lambda: _publish_local_once(path, data))


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
    infos = retrying("list", uri, lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True,
                                                                              allow_not_found=True)))
    rels = sorted(posixpath.relpath(i.path, path) if is_s3(uri) else os.path.relpath(i.path, path)
                  for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))
    return [join(uri, rel) for rel in rels]


def delete_file(uri: str) -> None:
    """Remove one file or S3 object; a missing one is not an error."""
    fs, path = resolve(uri)

    def delete() -> None:
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass

    retrying("delete", uri, delete)


def delete_tree(uri: str) -> None:
    """Remove a folder (or S3 prefix) and everything under it; nothing there is not an error."""
    fs, path = resolve(uri)

    def delete() -> None:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)

    retrying("delete", uri, delete)


def ensure_bucket(uri: str) -> None:
    """Fail early with a clear message if an s3:// URI's bucket is missing or unreachable."""
    if not is_s3(uri):
        return
    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    info = retrying("reach", uri, lambda: fs.get_file_info(bucket))
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"cannot use {uri}: the bucket {bucket!r} does not exist")


def unique_tmp_name(prefix: str = "tmp") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
