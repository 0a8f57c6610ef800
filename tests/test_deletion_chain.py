"""The deletion chain's guarantees, without Ray: the operator's id key (never in the chain, rotations detected),
the anchor and --expect-head (a truncated or re-sealed chain fails the audit), stores that ignore create-once
writes (refused before any compute; two racing requests never both win silently), and the dataset version
without the forgotten samples (installed, completed after a stop, refused when the samples came back).
The end-to-end requests through Ray, the attacker and a fresh `unlearn train` are in tests/test_forget.py."""

import json
import os
import shutil

import pytest

from jobs import audit, forget
from jobs.common import run_main
from pipeline import storage
from pipeline.data import removal
from pipeline.data.converters import prepare
from pipeline.data.shards import read_index, read_meta, verify_checksums
from pipeline.deletion import chain as chain_module
from pipeline.deletion.anchor import read_anchor
from pipeline.deletion.chain import (NotRecorded, anchor_record, chain_state, check_store, dataset_problems,
                                     probe_conditional_create, publish_record, read_chain, repeated_ids, sealed_bytes,
                                     sha256_hex)
from pipeline.deletion.keys import (KEY_ENV, KEY_FILE_ENV, PREVIOUS_FILE_ENV, key_from_secret, keyring, operator_key)
from pipeline.errors import ConfigError, DataError
from pipeline.runs.identity import with_data_removals
from tests.faulty_s3_proxy import FaultyS3Proxy
from tests.test_deletion import KEY, make_record

SECRET = "operator-secret-" + "5" * 40


def first_record(tmp_path, chain: str) -> dict:
    """make_record's first record, with the input model file it names."""
    storage.write_bytes(str(tmp_path / "orig.pt"), b"orig")
    record = make_record(chain, 1, None)
    record["input_model"]["uri"] = str(tmp_path / "orig.pt")
    return record


# ---- the id key ---------------------------------------------------------------------------------------------

def test_a_request_without_the_secret_is_a_clear_error_before_anything_is_read(tmp_path, monkeypatch, capsys):
    for name in (KEY_ENV, KEY_FILE_ENV, PREVIOUS_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    argv = ["--data", str(tmp_path / "no-data"), "--model", str(tmp_path / "no-model.pt"), "--ids",
            str(tmp_path / "no-ids.txt"), "--out", str(tmp_path / "chain")]
    assert run_main(forget.main, argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no id key:") and KEY_FILE_ENV in error and KEY_ENV in error
    assert not (tmp_path / "chain").exists()  # nothing written, no data or model read (neither exists)


def test_the_key_comes_from_a_file_or_the_environment_and_is_never_shown(tmp_path):
    key_file = tmp_path / "id.key"
    key_file.write_text(SECRET + "\n")
    os.chmod(key_file, 0o600)
    from_file, from_env = operator_key({KEY_FILE_ENV: str(key_file)}), operator_key({KEY_ENV: SECRET})
    assert from_file.version == from_env.version and from_file.tombstones(["a"]) == from_env.tombstones(["a"])
    assert SECRET not in repr(from_file) and SECRET[:20] not in from_file.version
    with pytest.raises(ConfigError, match="both") as both:
        operator_key({KEY_FILE_ENV: str(key_file), KEY_ENV: SECRET})
    with pytest.raises(ConfigError, match="shorter than 32 characters") as short:
        operator_key({KEY_ENV: "hunter2-is-short"})
    with pytest.raises(ConfigError, match="cannot be read") as missing:
        operator_key({KEY_FILE_ENV: str(tmp_path / "absent.key")})
    for error in (both, short, missing):
        assert SECRET not in str(error.value) and "hunter2" not in str(error.value)


def test_a_rotated_key_is_detected_and_the_earlier_one_still_finds_what_was_forgotten(tmp_path):
    chain = str(tmp_path / "chain")
    publish_record(chain, first_record(tmp_path, chain))  # forgot s1 under KEY
    state = chain_state(chain)
    new_secret = "rotated-secret-" + "9" * 40
    (tmp_path / "new.key").write_text(new_secret)
    (tmp_path / "old.keys").write_text("unit-test-secret-" + "7" * 32 + "\n")
    current, keys = keyring({KEY_FILE_ENV: str(tmp_path / "new.key")})
    assert current.version != KEY.version and set(keys) == {current.version}
    with pytest.raises(ConfigError, match=f"request\\(s\\) r1 under key version {KEY.version}.*{PREVIOUS_FILE_ENV}"):
        repeated_ids(["s1", "s9"], state, keys)  # never a silent "not forgotten before"
    current, keys = keyring({KEY_FILE_ENV: str(tmp_path / "new.key"), PREVIOUS_FILE_ENV: str(tmp_path / "old.keys")})
    assert set(keys) == {current.version, KEY.version}
    assert repeated_ids(["s1", "s9"], state, keys) == [("s1", "r1")]


# ---- anchored chains ----------------------------------------------------------------------------------------

def anchored_chain(tmp_path, count=3, anchor_name="anchor.log") -> tuple[str, str]:
    """`count` accepted requests, each published and anchored as `unlearn forget` does."""
    chain, anchor = str(tmp_path / "chain"), str(tmp_path / anchor_name)
    storage.write_bytes(str(tmp_path / "orig.pt"), b"orig")
    previous, model = None, sha256_hex(b"orig")
    for sequence in range(1, count + 1):
        record = first_record(tmp_path, chain) if sequence == 1 else make_record(chain, sequence, previous,
                                                                                  input_sha=model)
        uri = publish_record(chain, record)
        anchor_record(chain, record, uri, anchor)
        previous, model = sha256_hex(sealed_bytes(record)), record["output_model"]["sha256"]
    return chain, anchor


def audit_of(capsys, *argv) -> tuple[int, str]:
    status = run_main(audit.main, list(argv))
    printed = capsys.readouterr()
    return status, printed.out + printed.err


def reseal(path, change) -> None:
    """Edit a record and seal it again: its digest matches its new content."""
    record = json.loads(path.read_text())
    change(record)
    path.write_bytes(sealed_bytes({k: v for k, v in record.items() if k != "record_digest"}))


def test_an_anchored_chain_passes_the_audit_with_its_head_and_its_anchor(tmp_path, capsys):
    chain, anchor = anchored_chain(tmp_path)
    head = read_chain(chain)[-1].sha256
    assert [entry.sequence for entry in read_anchor(anchor)] == [1, 2, 3]
    status, printed = audit_of(capsys, chain, "--expect-head", head, "--anchor", anchor, "--no-data-check")
    assert status == 0, printed
    assert f"3 record(s), every link and file verified, and it ends at the expected head and the anchor {anchor}" \
        in printed


def test_the_last_record_deleted_fails_the_audit_against_the_head_and_the_anchor(tmp_path, capsys):
    chain, anchor = anchored_chain(tmp_path)
    head = read_chain(chain)[-1].sha256
    (tmp_path / "chain" / "chain" / "000003.json").unlink()
    status, printed = audit_of(capsys, chain, "--no-data-check")
    assert status == 0 and "cannot be detected" in printed  # what the issue found: alone, the chain looks fine
    status, printed = audit_of(capsys, chain, "--expect-head", head, "--no-data-check")
    assert status == 1 and f"no record of the chain has the expected head sha256 {head}" in printed
    status, printed = audit_of(capsys, chain, "--anchor", anchor, "--no-data-check")
    assert status == 1 and "record 000003: anchored with sha256" in printed and "were removed" in printed
    with pytest.raises(DataError, match="broken, so no request is added.*were removed"):
        chain_state(chain, anchor)  # the next request does not extend a truncated chain


def test_a_record_edited_and_resealed_with_every_later_link_fails_the_audit(tmp_path, capsys):
    chain, anchor = anchored_chain(tmp_path)
    head = read_chain(chain)[-1].sha256
    records = tmp_path / "chain" / "chain"
    reseal(records / "000002.json", lambda r: r["request"].update(ids_count=2))
    new_link = sha256_hex((records / "000002.json").read_bytes())
    reseal(records / "000003.json", lambda r: r.update(previous_record_sha256=new_link))
    status, printed = audit_of(capsys, chain, "--no-data-check")
    assert status == 0  # digests and links all check out
    status, printed = audit_of(capsys, chain, "--expect-head", head, "--no-data-check")
    assert status == 1 and "re-sealed" in printed
    status, printed = audit_of(capsys, chain, "--anchor", anchor, "--no-data-check")
    assert status == 1 and "record 000002: the chain's record has sha256" in printed and "even if re-sealed" in printed
    assert "record 000003" in printed


def test_a_head_that_never_reached_the_anchor_is_named_and_can_be_anchored_by_hand(tmp_path, capsys):
    chain, anchor = anchored_chain(tmp_path, count=2)
    record = make_record(chain, 3, read_chain(chain)[-1].sha256, input_sha=read_chain(chain)[-1].record()
                         ["output_model"]["sha256"])
    publish_record(chain, record)  # recorded; the anchor was unreachable
    head = read_chain(chain)[-1].sha256
    status, printed = audit_of(capsys, chain, "--anchor", anchor, "--no-data-check")
    assert status == 1 and f"--anchor-head {head}" in printed
    status, printed = audit_of(capsys, chain, "--anchor", anchor, "--anchor-head", "0" * 64, "--no-data-check")
    assert status == 2 and "is not the chain's head" in printed
    status, printed = audit_of(capsys, chain, "--anchor", anchor, "--anchor-head", head, "--no-data-check")
    assert status == 0, printed
    status, printed = audit_of(capsys, chain, "--expect-head", read_chain(chain)[1].sha256, "--no-data-check")
    assert status == 1 and "1 record(s) were added after it" in printed


def test_an_s3_anchor_keeps_one_object_per_head(s3_bucket, tmp_path, capsys):
    chain, anchor = f"s3://{s3_bucket}/chain", f"s3://{s3_bucket}/anchor/prod"
    record = first_record(tmp_path, chain)
    anchor_record(chain, record, publish_record(chain, record), anchor)
    head = read_chain(chain)[0].sha256
    assert storage.list_files(anchor) == [f"{anchor}/000001-{head}.json"]
    status, printed = audit_of(capsys, chain, "--anchor", anchor, "--expect-head", head, "--no-data-check")
    assert status == 0, printed


# ---- stores that ignore create-once writes ------------------------------------------------------------------

@pytest.fixture
def ignoring_store(s3_bucket, monkeypatch):
    """The moto bucket behind a proxy that drops If-None-Match: every conditional PUT replaces the object."""
    with FaultyS3Proxy(os.environ["AWS_ENDPOINT_URL"], drop_headers=("If-None-Match",)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield f"s3://{s3_bucket}", proxy


def test_the_probe_tells_a_store_that_honours_create_once_from_one_that_ignores_it(tmp_path, s3_bucket, ignoring_store):
    root, proxy = ignoring_store
    assert probe_conditional_create(str(tmp_path / "chain"))  # a hard link / O_EXCL locally
    assert not probe_conditional_create(f"{root}/chain") and proxy.dropped["if-none-match"] >= 2
    with pytest.raises(ConfigError, match="does not honour conditional creates \\(If-None-Match.*"
                                          "--allow-unconditional-store"):
        check_store(f"{root}/chain", allow_unconditional=False)
    assert check_store(f"{root}/chain", allow_unconditional=True) is False
    assert storage.list_files(f"{root}/chain") == []  # the probe leaves nothing behind


def test_the_same_bucket_without_the_proxy_honours_create_once(s3_bucket):
    assert probe_conditional_create(f"s3://{s3_bucket}/chain")


def test_forget_refuses_a_store_that_ignores_if_none_match_before_any_compute(
        ignoring_store, digits_hard_uri, original_checkpoint, tmp_path, monkeypatch, capsys):
    import ray

    root, proxy = ignoring_store
    monkeypatch.setenv(KEY_ENV, SECRET)
    ids = tmp_path / "ids.txt"
    index = read_index(digits_hard_uri, read_meta(digits_hard_uri))
    train = [i for i, s in zip(index.column("sample_id").to_pylist(), index.column("split").to_pylist())
             if s == "train"]
    ids.write_text("\n".join(train[:3]) + "\n")
    model = tmp_path / "model.pt"
    shutil.copy(original_checkpoint, model)
    argv = ["--data", digits_hard_uri, "--model", str(model), "--model-sha256", sha256_hex(model.read_bytes()),
            "--ids", str(ids), "--out", f"{root}/chain", "--s3-endpoint", proxy.endpoint]
    assert run_main(forget.main, argv) == 2
    error = capsys.readouterr().err
    assert "does not honour conditional creates (If-None-Match" in error and "--allow-unconditional-store" in error
    assert storage.list_files(f"{root}/chain") == [] and not ray.is_initialized()


def race(chain: str, anchor: str, order: list[str], first: dict) -> dict:
    """Two requests A and B publishing and anchoring record 1, their steps interleaved in `order` (each of 'A', 'B'
    appears twice: publish, then anchor). Returns how each ended: 'won' or the error it raised."""
    records = {name: {**first, "request_id": f"req-{name}"} for name in "AB"}
    outcome, uris = {}, {}
    for name in order:
        if name in outcome:
            continue
        try:
            if name not in uris:
                uris[name] = publish_record(chain, records[name])
            else:
                anchor_record(chain, records[name], uris[name], anchor)
                outcome[name] = "won"
        except (NotRecorded, ConfigError) as exc:
            outcome[name] = str(exc)
    return outcome


@pytest.mark.parametrize("order, loser_sees", [
    ("ABAB", "two"),  # B replaces A's record before A anchors: A reads back B's, B finds A's head anchored too
    ("AABB", "two"),  # A anchors first and wins; B replaces its record and finds A's head anchored
])
def test_two_requests_racing_on_such_a_store_never_both_win_silently(ignoring_store, tmp_path, capsys, order,
                                                                     loser_sees):
    root, _ = ignoring_store
    chain, anchor = f"{root}/race-{order}", str(tmp_path / "anchor.log")
    outcome = race(chain, anchor, list(order), first_record(tmp_path, chain))
    assert list(outcome.values()).count("won") <= 1, outcome
    assert "another request claimed record 1 at the same time" in outcome["B"]
    status, printed = audit_of(capsys, chain, "--anchor", anchor, "--no-data-check")
    assert status == 1 and "the anchor holds 2 different heads for it" in printed  # whoever won, the audit says so


def test_a_record_replaced_between_write_and_read_back_is_not_recorded(ignoring_store, tmp_path, monkeypatch):
    root, _ = ignoring_store
    chain = f"{root}/replaced"
    mine = first_record(tmp_path, chain)
    theirs = {**mine, "request_id": "req-other"}
    create_once = storage.create_once

    def then_the_other_writes(uri, data):
        created = create_once(uri, data)
        create_once(uri, sealed_bytes(theirs))  # lands between this write and its read-back
        return created

    monkeypatch.setattr(storage, "create_once", then_the_other_writes)
    with pytest.raises(NotRecorded, match="another request was recorded"):
        publish_record(chain, mine)


# ---- the dataset without the forgotten samples ----------------------------------------------------------------

@pytest.fixture
def dataset(digits_hard_uri, tmp_path) -> str:
    uri = str(tmp_path / "data")
    shutil.copytree(digits_hard_uri, uri)
    return uri


def train_ids(uri: str) -> list[str]:
    index = read_index(uri, read_meta(uri))
    return [i for i, s in zip(index.column("sample_id").to_pylist(), index.column("split").to_pylist()) if s == "train"]


def test_a_removal_is_a_new_dataset_version_without_the_rows_and_their_old_files(dataset):
    before_meta, ids = read_meta(dataset), train_ids(dataset)[::97][:5]
    version = sha256_hex(removal.meta_bytes(dataset))
    removed = removal.plan_removal(dataset, ids, "/chains/prod", "req-1", version)
    assert removed.rows_removed == 5 and removed.version_before == version
    assert sha256_hex(removal.meta_bytes(dataset)) == version  # written, not installed: readers see the old version
    assert removal.install(dataset, removed.version_before, removed.version_after)
    meta = read_meta(dataset)
    assert not set(ids) & set(train_ids(dataset)) and meta.counts["train"] == before_meta.counts["train"] - 5
    assert removal.removals(meta) == [{"chain": "/chains/prod", "request": "req-1", "rows": 5}]
    verify_checksums(dataset, meta)
    old_files = {s["file"] for s in before_meta.shards} - {s["file"] for s in meta.shards}
    assert old_files and not any(os.path.exists(os.path.join(dataset, name)) for name in old_files)
    assert all(name.endswith(".req-1.parquet") for name in {s["file"] for s in meta.shards} - {s["file"] for s in
                                                                                               before_meta.shards})
    assert not removal.install(dataset, removed.version_before, removed.version_after)  # again: nothing to do
    with pytest.raises(DataError, match="changed while the request ran"):
        removal.plan_removal(dataset, train_ids(dataset)[:1], "/chains/prod", "req-2", version)


def test_a_version_that_is_never_installed_leaves_no_file(dataset):
    before = set(os.listdir(dataset))
    removed = removal.plan_removal(dataset, train_ids(dataset)[:2], "/c", "lost",
                                   sha256_hex(removal.meta_bytes(dataset)))
    removal.discard(removed)
    assert set(os.listdir(dataset)) == before | {removal.VERSIONS_DIR}


def removal_chain(tmp_path, dataset, ids) -> tuple[str, removal.Removal]:
    """A chain whose one accepted request removed `ids` from `dataset`, recorded but not installed yet."""
    chain = str(tmp_path / "chain")
    removed = removal.plan_removal(dataset, ids, chain, "r1", sha256_hex(removal.meta_bytes(dataset)))
    record = first_record(tmp_path, chain)
    record["data"].update(uri=dataset, version_before=removed.version_before, version_after=removed.version_after,
                          rows_removed=removed.rows_removed)
    publish_record(chain, record)
    return chain, removed


def test_a_removal_recorded_but_not_installed_is_named_by_the_audit_and_installed_by_the_next_request(
        tmp_path, dataset, capsys):
    ids = train_ids(dataset)[:3]
    chain, removed = removal_chain(tmp_path, dataset, ids)
    status, printed = audit_of(capsys, chain)
    assert status == 1 and "does not record that request r1 removed its samples" in printed
    assert "still exists: it holds samples request r1 removed" in printed
    forget.settle_dataset(chain, dataset, chain_state(chain))
    assert "installed the version of" in capsys.readouterr().out
    assert not set(ids) & set(train_ids(dataset))
    assert audit_of(capsys, chain)[0] == 0


def test_samples_back_in_the_data_stop_the_next_request_and_fail_the_audit(tmp_path, dataset, capsys):
    ids = train_ids(dataset)[:3]
    chain, removed = removal_chain(tmp_path, dataset, ids)
    removal.install(dataset, removed.version_before, removed.version_after)
    with pytest.raises(DataError, match="had samples removed by 1 deletion request.*bring them back"):
        prepare("digits-hard", dataset, seed=0, overwrite=True)
    meta = read_meta(dataset)
    meta.extra.pop(removal.REMOVED)  # as a dataset prepared again from its source would be
    storage.write_text(os.path.join(dataset, "_meta.json"), meta.to_json())
    with pytest.raises(DataError, match="forgotten samples may be back.*does not record that request r1"):
        forget.settle_dataset(chain, dataset, chain_state(chain))
    assert dataset_problems(chain, chain_state(chain).removals)
    with pytest.raises(ConfigError, match="a chain's requests all use the dataset it removed them from"):
        forget.settle_dataset(chain, str(tmp_path / "elsewhere"), chain_state(chain))


def test_a_training_sample_that_matches_a_tombstone_is_refused(tmp_path, dataset):
    chain = str(tmp_path / "chain")
    publish_record(chain, first_record(tmp_path, chain))  # forgot "s1"
    index = read_index(dataset, read_meta(dataset))
    forget.refuse_returned(dataset, index, chain_state(chain), {KEY.version: KEY})  # no s1 in digits-hard
    tombstone = KEY.tombstones([train_ids(dataset)[0]])[0]  # as if r1 had forgotten a sample the data holds again
    state = chain_module.ChainState(2, None, None, {KEY.version: {tombstone: "r1"}})
    with pytest.raises(DataError, match="holds 1 training sample\\(s\\) that request\\(s\\) r1 of this chain forgot"):
        forget.refuse_returned(dataset, index, state, {KEY.version: KEY})


def test_a_run_made_before_a_removal_is_another_run_after_it(dataset):
    identity = {"data": dataset, "seed": 1}
    assert with_data_removals(identity, read_meta(dataset)) == identity  # nothing removed: identities as before
    removed = removal.plan_removal(dataset, train_ids(dataset)[:1], "/c", "r1", sha256_hex(removal.meta_bytes(dataset)))
    removal.install(dataset, removed.version_before, removed.version_after)
    after = with_data_removals(identity, read_meta(dataset))
    assert after != identity and after["data_removals"]


def test_the_bench_does_not_reuse_a_model_made_before_samples_were_removed(dataset, tmp_path):
    from jobs.bench import _remember, _reusable, data_fingerprint

    folder = str(tmp_path / "models" / "original")
    os.makedirs(folder)
    open(os.path.join(folder, "model.pt"), "wb").close()
    settings = {"data": dataset, "seed": 0}
    before = data_fingerprint(dataset, dict(settings))
    assert before == settings  # no removal: the fingerprints of models made before this change still match
    _remember(folder, before, {})
    assert _reusable(folder, data_fingerprint(dataset, dict(settings))) is not None
    removed = removal.plan_removal(dataset, train_ids(dataset)[:3], "/c", "r1", sha256_hex(removal.meta_bytes(dataset)))
    removal.install(dataset, removed.version_before, removed.version_after)
    with pytest.raises(ConfigError, match="made from other settings"):
        _reusable(folder, data_fingerprint(dataset, dict(settings)))
