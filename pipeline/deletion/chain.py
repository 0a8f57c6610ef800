"""The audit chain of a model's deletion requests: one JSON record per request, each naming the sha256 of the one
before it, so that editing, removing or reordering any record breaks every link after it.

Layout under a chain URI (a local folder or an s3:// prefix):

    chain/000001.json        the records, numbered from 1; each is created once and never rewritten
    models/<request>.pt      the model each accepted request produced (the next request's input)
    rejected/<request>.pt    the model a rejected request produced, kept as evidence
    forgotten/<request>.txt  one HMAC-SHA256 per forgotten id under the operator's key (pipeline/deletion/keys.py):
                             a later request is checked against these; without the key they match no id
    receipts/<request>.html  the one-page receipt per request
    runs/<request>/          the Ray Train run and its result records

No record or file holds an id, or the key: a record names the key's version only. A record is written only after
everything it names exists, then read back. Of two requests racing for the same sequence number exactly one is
recorded, on a store that honours create-once writes (probed before each request: `check_store`); the other
fails and says so. A chain cannot show by itself that its last records were removed or that it was re-sealed
after an edit: the anchor (pipeline/deletion/anchor.py) and `unlearn audit --expect-head` can.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline import storage
from pipeline.storage import file_sha256  # noqa: F401 (the chain's callers take it from here)
from pipeline.data import removal
from pipeline.data.shards import DatasetMeta, META_FILE
from pipeline.deletion.anchor import anchor_problems, append_anchor, new_entry, read_anchor
from pipeline.deletion.keys import PREVIOUS_FILE_ENV, IdKey
from pipeline.errors import ConfigError, DataError, StorageUnavailableError
from pipeline.train.console import log

SCHEMA_PATH = Path(__file__).with_name("audit_record.schema.json")
SCHEMA_ID = "ray-unlearn/deletion-audit/2"
CHAIN_DIR, MODELS_DIR, REJECTED_DIR, FORGOTTEN_DIR, RECEIPTS_DIR, RUNS_DIR = (
    "chain", "models", "rejected", "forgotten", "receipts", "runs")
ACCEPTED, REJECTED = "accepted", "rejected"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_name(sequence: int) -> str:
    return f"{sequence:06d}.json"


def location(chain_uri: str, folder: str, request_id: str, suffix: str) -> str:
    return storage.join(chain_uri, folder, f"{request_id}{suffix}")


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


# ---- writing ------------------------------------------------------------------------------------------------

def probe_conditional_create(chain_uri: str) -> bool:
    """Whether the chain's store refuses to create an object that exists (If-None-Match on S3, a hard link or
    O_EXCL locally) and keeps the first one's bytes: the guarantee that of two racing requests one fails."""
    probe = storage.join(chain_uri, CHAIN_DIR, f".probe-{uuid.uuid4().hex}")
    first, second = b"first writer " + probe.encode(), b"second writer " + probe.encode()
    try:
        created = storage.create_once(probe, first)
        created_again = storage.create_once(probe, second)
        kept = storage.read_bytes(probe)
    finally:
        storage.delete_file(probe)
    return created and not created_again and kept == first


def check_store(chain_uri: str, allow_unconditional: bool) -> bool:
    """Refuse a store that ignores create-once writes, unless allowed (then say so loudly); True if it honours them."""
    if probe_conditional_create(chain_uri):
        return True
    how = "If-None-Match" if storage.is_s3(chain_uri) else "O_EXCL"
    what = (f"the store of {chain_uri} does not honour conditional creates ({how}: a second create of the same name "
            "replaced the first)")
    if not allow_unconditional:
        raise ConfigError(f"{what}, so two requests running at once could both be recorded under one number and one "
                          "would silently replace the other. Use a store that honours them (AWS S3 does), or pass "
                          "--allow-unconditional-store to go on with only a read-back and the anchor to catch a race")
    log(f"WARNING: {what}. Going on because of --allow-unconditional-store: a racing request is caught only by "
        "reading the record back and by the anchor, and the record says the store was not safe")
    return False


class NotRecorded(ConfigError):
    """Another request took this record's sequence number: nothing of this request is in the chain."""


def publish_record(chain_uri: str, record: dict) -> str:
    """Store the record as the chain's next entry and read it back; refuse if another request took that number
    meanwhile (NotRecorded: nothing of this request is then in the chain)."""
    uri = storage.join(chain_uri, CHAIN_DIR, record_name(record["sequence"]))
    data = sealed_bytes(record)
    if not storage.create_once(uri, data) or storage.read_bytes(uri) != data:
        raise NotRecorded(f"another request was recorded as {uri} while this one ran; this request is not in the "
                          "chain: run it again on the chain's new head")
    return uri


def anchor_record(chain_uri: str, record: dict, record_uri: str, anchor_uri: str) -> None:
    """Append the published record's sha256 to the anchor, then check that it is the only head anchored for its
    number and still the chain's record there. A store that ignores If-None-Match lets a racer replace a record
    after its read-back: the anchor then holds both heads, and whichever request sees the other's fails."""
    sha = sha256_hex(sealed_bytes(record))
    try:
        append_anchor(anchor_uri, new_entry(chain_uri, record["sequence"], sha, record["request_id"]))
    except (DataError, StorageUnavailableError) as exc:  # the record stands: say how to finish, keep the kind
        raise type(exc)(f"record {record_uri} (sha256 {sha}) is in the chain, but its head could not be added to the "
                        f"anchor {anchor_uri} ({exc}); once it is reachable, check the record and run `unlearn audit "
                        f"{chain_uri} --anchor {anchor_uri} --anchor-head {sha}`") from exc
    heads = {entry.record_sha256 for entry in read_anchor(anchor_uri)
             if entry.chain == chain_uri and entry.sequence == record["sequence"]}
    replaced = storage.read_bytes(record_uri) != sealed_bytes(record)
    if heads != {sha} or replaced:
        seen = (f"{record_uri} now holds another request's record" if replaced else
                f"the anchor {anchor_uri} holds {len(heads)} heads for it")
        raise ConfigError(f"another request claimed record {record['sequence']} at the same time on a store that did "
                          f"not stop it ({seen}); this request does not count as recorded. `unlearn audit {chain_uri} "
                          f"--anchor {anchor_uri}` names both heads")


# ---- reading ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChainState:
    """What a new request needs from the chain: where it continues, which model it must start from, which ids
    are already forgotten (as tombstones per key version), where it is anchored, which requests removed rows."""

    next_sequence: int
    previous_sha256: str | None
    head_model: dict | None  # {"uri", "sha256", "request_id"} of the last accepted request
    tombstones: dict[str, dict[str, str]]  # key version -> {HMAC of an id -> request id that forgot it}
    anchor: str | None = None  # the anchor the last record was appended to
    removals: tuple[dict, ...] = ()  # the `data` of each accepted request that removed rows, with its request id


def chain_state(chain_uri: str, anchor_uri: str | None = None) -> ChainState:
    """The chain's head, after checking it end to end (and against the anchor, when given): a request never
    extends a broken, truncated or re-sealed chain."""
    entries, problems = verify_chain(chain_uri)
    if anchor_uri and entries and not problems and _anchored_before(chain_uri, entries, anchor_uri):
        problems += anchored_problems(chain_uri, entries, anchor_uri)
    if problems:
        raise DataError(f"the audit chain at {chain_uri} is broken, so no request is added to it "
                        f"(run `unlearn audit {chain_uri}`): {problems[0]}")
    if not entries:
        return ChainState(1, None, None, {})
    records = [entry.record() for entry in entries]
    accepted = [r for r in records if r["verdict"] == ACCEPTED]
    tombstones: dict[str, dict[str, str]] = {}
    for record in accepted:
        marks = tombstones.setdefault(record["id_key"]["version"], {})
        for line in storage.read_text(record["forgotten_ids"]["uri"]).split():
            marks[line] = record["request_id"]
    head = accepted[-1] if accepted else None
    head_model = ({"uri": head["output_model"]["uri"], "sha256": head["output_model"]["sha256"],
                   "request_id": head["request_id"]} if head else None)
    return ChainState(len(entries) + 1, entries[-1].sha256, head_model, tombstones, records[-1].get("anchor"),
                      removals_of(records))


def removals_of(records: list[dict]) -> tuple[dict, ...]:
    """The `data` of each accepted request that removed rows from its dataset, with the request's id."""
    return tuple({**r["data"], "request_id": r.get("request_id")} for r in records
                 if r.get("verdict") == ACCEPTED and isinstance(r.get("data"), dict) and r["data"].get("version_after"))


def _anchored_before(chain_uri: str, entries: list[ChainEntry], anchor_uri: str) -> bool:
    """Whether the chain was anchored before: a record names an anchor, or this anchor holds a head of it. An
    unanchored chain starts being anchored with its next request; one anchored before must match its anchor."""
    return (any(entry.record().get("anchor") for entry in entries)
            or any(found.chain == chain_uri for found in read_anchor(anchor_uri)))


def repeated_ids(ids: list[str], state: ChainState, keys: dict[str, IdKey]) -> list[tuple[str, str]]:
    """(id, request that forgot it) for each of `ids` an earlier accepted request forgot. Each request's
    tombstones are matched under the key it was made with: a key the operator did not give is an error (a
    rotated key without the earlier one), never a silent "not forgotten before"."""
    unknown = {version: sorted(set(marks.values())) for version, marks in state.tombstones.items()
               if version not in keys}
    if unknown:
        named = "; ".join(f"request(s) {', '.join(requests)} under key version {version}"
                          for version, requests in unknown.items())
        raise ConfigError(f"earlier requests were recorded under an id key that was not given ({named}; given: "
                          f"version(s) {', '.join(keys)}). If the key was rotated, give the earlier secret(s) in "
                          f"{PREVIOUS_FILE_ENV}, so that this request can be checked against what they forgot")
    found = []
    for version, marks in state.tombstones.items():
        found += [(sample_id, marks[mark]) for sample_id, mark in zip(ids, keys[version].tombstones(ids))
                  if mark in marks]
    return found


# ---- verification -------------------------------------------------------------------------------------------

def verify_chain(chain_uri: str) -> tuple[list[ChainEntry], list[str]]:
    """Every record, and each break found, named by its place: a gap or a stray file, a record that is not
    valid JSON or not of the schema, one edited after it was written, a broken link to the one before, a
    model or forgotten-id file whose sha256 differs from its record, a request that did not start from
    the model the chain had produced. An empty list of problems means the chain holds together; whether it
    was truncated or re-sealed as a whole only the anchor or an expected head can tell (anchored_problems)."""
    entries = read_chain(chain_uri)
    problems: list[str] = []
    previous: ChainEntry | None = None
    head_sha256 = None
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
        problems += _check_files(where, record, head_sha256)
        if record.get("verdict") == ACCEPTED and isinstance(record.get("output_model"), dict):
            head_sha256 = record["output_model"].get("sha256")
        previous = entry
    return entries, problems


def anchored_problems(chain_uri: str, entries: list[ChainEntry], anchor_uri: str) -> list[str]:
    """Where the chain departs from the heads its anchor holds (pipeline/deletion/anchor.py)."""
    try:
        anchored = read_anchor(anchor_uri)
    except DataError as exc:
        return [f"the anchor cannot be read: {exc}"]
    return anchor_problems(chain_uri, [entry.sha256 for entry in entries], anchored, anchor_uri)


def adopt_head(chain_uri: str, entries: list[ChainEntry], anchor_uri: str, sha: str) -> None:
    """Anchor the chain's head `sha` by hand: for a request that recorded itself but could not reach the anchor.
    Only the head, only with the sha256 the operator read from that request, only when everything else holds."""
    sha = sha.strip().lower()
    record_shas = [entry.sha256 for entry in entries]
    if not record_shas or record_shas[-1] != sha:
        head = record_shas[-1] if record_shas else "none"
        raise ConfigError(f"--anchor-head {sha} is not the chain's head ({head}): only the last record can be "
                          "anchored by hand")
    mine = [entry for entry in read_anchor(anchor_uri) if entry.chain == chain_uri]
    if mine and max(entry.sequence for entry in mine) != len(entries) - 1:
        raise ConfigError(f"the anchor's last head of this chain is record {max(e.sequence for e in mine)}, not "
                          f"{len(entries) - 1}: only a chain one record past its anchor can be anchored by hand")
    problems = anchor_problems(chain_uri, record_shas[:-1], mine, anchor_uri) if mine else []
    if problems:
        raise DataError(f"the chain does not match its anchor before its head, so the head is not anchored: "
                        f"{problems[0]}")
    append_anchor(anchor_uri, new_entry(chain_uri, len(entries), sha, entries[-1].record().get("request_id", "?")))


def dataset_problems(chain_uri: str, removals: tuple[dict, ...]) -> list[str]:
    """Whether the samples the chain's accepted requests removed are still gone: the dataset's `_meta.json` must
    record each removal (a dataset prepared again from its source does not), and the shard files each removal
    replaced must no longer exist. `removals`: ChainState.removals."""
    problems, metas = [], {}
    for done in removals:
        uri, request = done["uri"], done["request_id"]
        try:
            meta = metas.get(uri) or metas.setdefault(uri, DatasetMeta.from_json(
                storage.read_text(storage.join(uri, META_FILE)), storage.join(uri, META_FILE)))
            if removal.missing_removals(meta, chain_uri, [request]):
                problems.append(f"the dataset {uri} does not record that request {request} removed its samples: "
                                "they may be back (prepared again?), or the removal was not installed yet (the next "
                                "`unlearn forget` on this chain installs it)")
            problems += [f"{file} still exists: it holds samples request {request} removed"
                         for file in removal.replaced_files(uri, done["version_before"], done["version_after"])
                         if storage.exists(file)]
        except DataError as exc:
            problems.append(f"request {request}: the dataset it removed samples from cannot be checked: {exc}")
    return problems


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
