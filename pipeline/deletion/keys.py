"""The operator's id key: what turns a sample id into a tombstone nobody without the key can match.

A deletion chain must let a later request find out that an id was already forgotten, without letting anyone
who reads the chain find out which ids those were. An unkeyed hash does not do that: the training ids are in
the shard index, so hashing every one of them and comparing takes seconds. So every id digest in a chain is an
HMAC-SHA256 under a key derived from a secret only the operator holds, and no record or file holds the secret:

    UNLEARN_ID_KEY_FILE   a local file or an s3:// object holding the secret (recommended: the value of
                          UNLEARN_ID_KEY would be inherited by the Ray processes a job starts)
    UNLEARN_ID_KEY        the secret itself
    UNLEARN_ID_KEY_PREVIOUS_FILE
                          after a rotation: the earlier secret(s), one per line, so a new request can still be
                          checked against the tombstones of records made under them

Records name the key they used by a *version*: an HMAC of a fixed label under the secret, which says whether two
records used the same secret without revealing it. The secret is never logged, stored, or put in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass, field

from pipeline import storage
from pipeline.errors import ConfigError, DataError
from pipeline.train.console import log

KEY_ENV, KEY_FILE_ENV, PREVIOUS_FILE_ENV = "UNLEARN_ID_KEY", "UNLEARN_ID_KEY_FILE", "UNLEARN_ID_KEY_PREVIOUS_FILE"
ALGORITHM = "hmac-sha256"
MIN_SECRET_CHARS = 32  # e.g. `openssl rand -hex 32` gives 64; 32 hex characters are 128 bits
# Fixed labels: one key for the ids, another for the version, so that neither output says anything about the other.
IDS_LABEL, VERSION_LABEL = b"ray-unlearn/deletion/id-tombstones/v1", b"ray-unlearn/deletion/key-version/v1"
VERSION_CHARS = 32
HOW_TO_SET = (f"keep a secret of at least {MIN_SECRET_CHARS} characters in a file only the operator can read "
              f"(e.g. `umask 077; openssl rand -hex 32 > id.key`) and set {KEY_FILE_ENV} to its path or s3:// URI, or "
              f"put the secret itself in {KEY_ENV}")


@dataclass(frozen=True)
class IdKey:
    """A keyed digest of sample ids. `version` names the secret; the key itself never leaves this object."""

    version: str
    _key: bytes = field(repr=False)

    def tombstones(self, ids) -> list[str]:
        """HMAC-SHA256 per id, in the order given. The keyed state is set up once and copied per id (1.4x faster:
        a request checks every training id of the dataset, 1.28 M at ImageNet size)."""
        keyed = hmac.new(self._key, digestmod=hashlib.sha256)

        def one(sample_id) -> str:
            digest = keyed.copy()
            digest.update(str(sample_id).encode("utf-8"))
            return digest.hexdigest()

        return [one(i) for i in ids]

    def list_digest(self, ids) -> str:
        """HMAC-SHA256 of the sorted, distinct ids joined by newlines: names a list, and only the key holder can
        tell which list (a 1-id request cannot be found by trying every training id without the key)."""
        body = "\n".join(sorted({str(i) for i in ids})).encode("utf-8")
        return hmac.new(self._key, b"list\n" + body, hashlib.sha256).hexdigest()


def key_from_secret(secret: str, where: str) -> IdKey:
    """The IdKey of a secret (surrounding whitespace ignored), refused when too short to resist guessing."""
    secret = secret.strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"the id key from {where} is shorter than {MIN_SECRET_CHARS} characters: {HOW_TO_SET}")
    raw = secret.encode("utf-8")
    version = hmac.new(raw, VERSION_LABEL, hashlib.sha256).hexdigest()[:VERSION_CHARS]
    return IdKey(version, hmac.new(raw, IDS_LABEL, hashlib.sha256).digest())


def _read_secret_file(uri: str, variable: str) -> str:
    """The text of a key file named by `variable`; a local file others can read gets a warning (not the key)."""
    uri = uri.strip()
    if not storage.is_s3(uri):
        uri = os.path.abspath(os.path.expanduser(uri))
        if os.path.exists(uri) and os.stat(uri).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log(f"WARNING: the id key file {uri} ({variable}) can be read by other users: chmod 600 it")
    try:
        return storage.read_text(uri)
    except DataError as exc:
        raise ConfigError(f"{variable} names {uri}, which cannot be read ({exc}): {HOW_TO_SET}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{variable} names {uri}, which is not text: the key file holds the secret as text") from None


def operator_key(environ=os.environ) -> IdKey:
    """The current key, from UNLEARN_ID_KEY_FILE or UNLEARN_ID_KEY (exactly one), or a ConfigError saying how to
    provide it. Called before any compute: a request that could not record its tombstones must not start."""
    path, value = environ.get(KEY_FILE_ENV, "").strip(), environ.get(KEY_ENV, "")
    if path and value:
        raise ConfigError(f"both {KEY_FILE_ENV} and {KEY_ENV} are set: set one, so it is clear which secret is used")
    if path:
        return key_from_secret(_read_secret_file(path, KEY_FILE_ENV), KEY_FILE_ENV)
    if value.strip():
        return key_from_secret(value, KEY_ENV)
    raise ConfigError(f"no id key: a deletion request stores the forgotten ids only as HMACs under the operator's "
                      f"secret, so it needs one before it starts: {HOW_TO_SET}")


def previous_keys(environ=os.environ) -> list[IdKey]:
    """Keys of earlier secrets (UNLEARN_ID_KEY_PREVIOUS_FILE, one per line), for records made before a rotation."""
    path = environ.get(PREVIOUS_FILE_ENV, "").strip()
    if not path:
        return []
    lines = [line for line in _read_secret_file(path, PREVIOUS_FILE_ENV).splitlines() if line.strip()]
    return [key_from_secret(line, f"{PREVIOUS_FILE_ENV} (line {number})") for number, line in enumerate(lines, 1)]


def keyring(environ=os.environ) -> tuple[IdKey, dict[str, IdKey]]:
    """The current key, and every key the operator gave (the current one and earlier ones) by version."""
    current = operator_key(environ)
    return current, {key.version: key for key in [*previous_keys(environ), current]}
