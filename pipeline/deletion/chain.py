"""The audit chain of a model's deletion requests: one JSON record per request, each naming the sha256 of the one
before it, so that editing, removing or reordering any record breaks every link after it.

Layout under a chain URI (a local folder or an s3:// prefix):

    chain/000001.json        the records, numbered from 1; each is created once and never rewritten
    models/<request>.pt      the model each accepted request produced (the next request's input)
    rejected/<request>.pt    the model a rejected request produced, kept as evidence
    forgotten/<request>.txt  sha256(key | id) per forgotten id: a later request is checked against these,
                             and neither the records nor these files hold an id itself
    receipts/<request>.html  the one-page receipt per request
    runs/<request>/          the Ray Train run and its result records

A record is written only after everything it names exists. Of two requests racing for the same sequence
number exactly one is recorded (a create-once write); the other fails and says so.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline import storage
from pipeline.errors import ConfigError, DataError

SCHEMA_PATH = Path(__file__).with_name("audit_record.schema.json")
SCHEMA_ID = "ray-unlearn/deletion-audit/1"
CHAIN_DIR, MODELS_DIR, REJECTED_DIR, FORGOTTEN_DIR, RECEIPTS_DIR, RUNS_DIR = (
    "chain", "models", "rejected", "forgotten", "receipts", "runs")
ACCEPTED, REJECTED = "accepted", "rejected"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(uri: str) -> str:
    return sha256_hex(storage.read_bytes(uri))


def record_name(sequence: int) -> str:
    return f"{sequence:06d}.json"


def location(chain_uri: str, folder: str, request_id: str, suffix: str) -> str:
    return storage.join(chain_uri, folder, f"{request_id}{suffix}")


def new_id_hash_key() -> str:
    """The chain's key for hashing forgotten ids (chosen once, in the first record)."""
    return secrets.token_hex(16)


# ---- records ------------------------------------------------------------------------------------------------

def content_digest(record: dict) -> str:
    """sha256 of the record's canonical JSON without its own digest: a record edited afterwards no longer matches."""
    body = {key: value for key, value in record.items() if key != "record_digest"}
    return sha256_hex(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def sealed_bytes(record: dict) -> bytes:
    """The bytes stored for a record: its content plus its digest, as indented JSON."""
    return (json.dumps({**record, "record_digest": content_digest(record)}, indent=2, sort_keys=True)
            + "\n").encode("utf-8")


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(record: dict) -> list[str]:
    """Where `record` departs from audit_record.schema.json ("" path = the top level)."""
    return [f"{'/'.join(str(p) for p in error.absolute_path) or 'record'}: {error.message}"
            for error in sorted(_validator().iter_errors(record), key=lambda e: list(e.absolute_path))]


@dataclass(frozen=True)
class ChainEntry:
    uri: str
    data: bytes

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def sha256(self) -> str:
        return sha256_hex(self.data)

    def record(self) -> dict:
        try:
            value = json.loads(self.data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.uri} is not a readable audit record: {exc}") from exc
        if not isinstance(value, dict):
            raise DataError(f"{self.uri} is not a readable audit record: not a JSON object")
        return value


def read_chain(chain_uri: str) -> list[ChainEntry]:
    """Every stored record in sequence-number order (nothing is checked here; see verify_chain)."""
    storage.ensure_bucket(chain_uri)
    return [ChainEntry(uri, storage.read_bytes(uri))
            for uri in storage.list_files(storage.join(chain_uri, CHAIN_DIR), ".json")]


def publish_record(chain_uri: str, record: dict) -> str:
    """Store the record as the chain's next entry; refuse if another request took that number meanwhile."""
    uri = storage.join(chain_uri, CHAIN_DIR, record_name(record["sequence"]))
    if not storage.create_once(uri, sealed_bytes(record)):
        raise ConfigError(f"another request was recorded as {uri} while this one ran; nothing of this request "
                          f"was recorded: run it again on the chain's new head")
    return uri


@dataclass(frozen=True)
class ChainState:
    """What a new request needs from the chain: where it continues, which model it must start from, which ids
    are already forgotten (by their keyed hashes)."""

    next_sequence: int
    previous_sha256: str | None
    id_hash_key: str | None
    head_model: dict | None  # {"uri", "sha256", "request_id"} of the last accepted request
    forgotten: dict[str, str]  # keyed id hash -> request id that forgot it


def chain_state(chain_uri: str) -> ChainState:
    """The chain's head, after checking it end to end: a request never extends a broken chain."""
    entries, problems = verify_chain(chain_uri)
    if problems:
        raise DataError(f"the audit chain at {chain_uri} is broken, so no request is added to it "
                        f"(run `unlearn audit {chain_uri}`): {problems[0]}")
    if not entries:
        return ChainState(1, None, None, None, {})
    records = [entry.record() for entry in entries]
    accepted = [r for r in records if r["verdict"] == ACCEPTED]
    forgotten = {}
    for record in accepted:
        for line in storage.read_text(record["forgotten_ids"]["uri"]).split():
            forgotten[line] = record["request_id"]
    head = accepted[-1] if accepted else None
    head_model = ({"uri": head["output_model"]["uri"], "sha256": head["output_model"]["sha256"],
                   "request_id": head["request_id"]} if head else None)
    return ChainState(len(entries) + 1, entries[-1].sha256, records[0]["id_hash_key"], head_model, forgotten)


# ---- verification -------------------------------------------------------------------------------------------

def verify_chain(chain_uri: str) -> tuple[list[ChainEntry], list[str]]:
    """Every record, and each break found, named by its place: a gap or a stray file, a record that is not
    valid JSON or not of the schema, one edited after it was written, a broken link to the one before, a
    model or forgotten-id file whose sha256 differs from its record, a request that did not start from
    the model the chain had produced. An empty list of problems means the chain holds."""
    entries = read_chain(chain_uri)
    problems: list[str] = []
    previous: ChainEntry | None = None
    head_sha256, key = None, None
    for position, entry in enumerate(entries, start=1):
        where = f"{CHAIN_DIR}/{entry.name}"
        if entry.name != record_name(position):
            problems.append(f"{where}: expected {record_name(position)} here (a record is missing, renamed or added)")
        try:
            record = entry.record()
        except DataError as exc:
            problems.append(f"{where}: {exc}")
            previous = entry
            continue
        problems += [f"{where}: {error}" for error in schema_errors(record)]
        if record.get("record_digest") != content_digest(record):
            problems.append(f"{where}: its content no longer matches its digest (edited after it was written)")
        if record.get("sequence") != position:
            problems.append(f"{where}: says it is request number {record.get('sequence')}, but stands at {position}")
        expected_link = previous.sha256 if previous else None
        if record.get("previous_record_sha256") != expected_link:
            before = f"{CHAIN_DIR}/{previous.name}" if previous else "nothing (it is the first record)"
            problems.append(f"{where}: links to a previous record with sha256 {record.get('previous_record_sha256')}, "
                            f"but {before} has {expected_link}: the record before it was changed or replaced")
        key = key or record.get("id_hash_key")
        if record.get("id_hash_key") != key:
            problems.append(f"{where}: its id hash key differs from the first record's")
        problems += _check_files(where, record, head_sha256)
        if record.get("verdict") == ACCEPTED and isinstance(record.get("output_model"), dict):
            head_sha256 = record["output_model"].get("sha256")
        previous = entry
    return entries, problems


def _check_files(where: str, record: dict, head_sha256: str | None) -> list[str]:
    problems = []
    model_in = record.get("input_model") or {}
    if head_sha256 and model_in.get("sha256") != head_sha256:
        problems.append(f"{where}: started from a model with sha256 {model_in.get('sha256')}, not the model the "
                        f"chain had produced ({head_sha256})")
    named = [("output model", record.get("output_model"))]
    if head_sha256 is None:  # the chain's first model: later inputs are earlier outputs, checked there
        named.append(("input model", model_in))
    if record.get("verdict") == ACCEPTED:
        named.append(("forgotten-id file", record.get("forgotten_ids")))
    for what, ref in named:
        if not isinstance(ref, dict) or not ref.get("uri"):
            continue
        try:
            actual = file_sha256(ref["uri"])
        except DataError as exc:
            problems.append(f"{where}: its {what} cannot be read ({exc})")
            continue
        if actual != ref.get("sha256"):
            problems.append(f"{where}: its {what} {ref['uri']} has sha256 {actual}, the record says {ref.get('sha256')} "
                            f"(the file was changed)")
    return problems
