"""U-LiRA's per-example picture in the report (no Ray): which forgotten samples stay exposed, per method, with a
histogram of per-sample scores; the variant named with each figure, and a failed sanity anchor said in red.

The audits are hand-made ulira.json files of the shape `unlearn audit-mia` writes (its `samples` list), pointed at
by bench records as jobs/bench.py points at them (config["u_lira"]["result"])."""

import json
import re
import subprocess

import numpy as np
import pytest

from pipeline.results import exposure, plots
from pipeline.results.records import append_record
from pipeline.results.report import write_report
from pipeline.runs.audit_mia import record_metrics
from tests.test_deletion import CHROMIUM, HEADLESS
from tests.test_results import assert_png, make_record

FAILED_ANCHOR = ("the shadows cannot tell the ORIGINAL model's D_f from never-seen samples (offline AUC 0.52 "
                 "[0.43, 0.61]): DO NOT TRUST these figures")


def samples(forgotten: list[float], never_seen: list[float], prefix: str) -> list[dict]:
    return ([{"sample_id": f"{prefix}-f{i}", "label": i % 10, "role": "forgotten", "phi": 0.0, "score": score}
             for i, score in enumerate(forgotten)]
            + [{"sample_id": f"{prefix}-n{i}", "label": i % 10, "role": "never_seen", "phi": 0.0, "score": score}
               for i, score in enumerate(never_seen)])


def write_audit(folder, method: str, seed: int, forgotten, never_seen, trusted=True, warnings=(), variant="online"):
    """A ulira.json and the bench record pointing at it."""
    auc = float(np.mean([[f > n for n in never_seen] for f in forgotten]))
    interval = {"value": auc, "low": auc - 0.05, "high": auc + 0.05}
    result = {"variant": variant, "method": method, "target": {"auc": interval, "balanced_accuracy": interval,
                                                               "tpr_at_fpr": {"0.01": None}},
              "shadow_trials": {"auc": interval, "tpr_at_fpr": {"0.01": {"value": 0.05}}},
              "bank": {"shadows_served": 16}, "trusted": trusted, "warnings": list(warnings), "fprs": [0.01],
              "samples": samples(forgotten, never_seen, f"{method}{seed}")}
    path = folder / f"{method}-s{seed}" / "ulira.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    config = {method: {}, "u_lira": {"variant": variant, "result": str(path), "trusted": trusted,
                                     "warnings": list(warnings)}}
    return make_record(method, seed, kind="bench", config=config, mia=0.2, mia_unseen=0.25,
                       **record_metrics(result))


def audited_run(tmp_path, lotus_trusted=(True, True)) -> str:
    """original (not audited), finetune (never exposed) and lotus (two forgotten samples above every never-seen
    one in seed 0, one in seed 1) over two seeds."""
    run = str(tmp_path / "run")
    audits = tmp_path / "audits"
    never_seen = list(np.linspace(-2.0, 1.0, 20))
    for seed in (0, 1):
        append_record(run, make_record("original", seed, kind="bench"), update_parquet=False)
        lotus = [5.0, 3.0] if seed == 0 else [4.0, 0.5]
        trusted = lotus_trusted[seed]
        append_record(run, write_audit(audits, "lotus", seed, lotus + list(np.linspace(-1.5, 0.5, 18)), never_seen,
                                       trusted=trusted, warnings=() if trusted else (FAILED_ANCHOR,)),
                      update_parquet=False)
        append_record(run, write_audit(audits, "finetune", seed, list(np.linspace(-1.9, 0.9, 20)), never_seen),
                      update_parquet=False)
    return run


def test_exposed_samples_are_those_above_every_never_seen_one_of_their_audit(tmp_path):
    from pipeline.results.records import load_records

    audits, notes = exposure.load_audits(load_records(audited_run(tmp_path)))
    assert not notes and {(a.method, a.seed) for a in audits} == {(m, s) for m in ("lotus", "finetune") for s in (0, 1)}
    by_method = {e.method: e for e in exposure.method_exposures(audits, ["finetune", "lotus"])}
    assert list(by_method) == ["finetune", "lotus"]
    lotus = by_method["lotus"]
    assert lotus.exposed_count == 3 and lotus.forgotten_count == 40 and by_method["finetune"].exposed_count == 0
    assert [(seed, sample_id, score) for seed, sample_id, _, score in lotus.most_exposed(3)] == [
        (0, "lotus0-f0", 5.0), (1, "lotus1-f0", 4.0), (0, "lotus0-f1", 3.0)]
    # 20 forgotten vs 20 never seen per audit: a forgotten sample that looks never seen tops them all with p = 1/21
    assert exposure.exposure_sentence(lotus) == ("lotus (online, seeds 0, 1): 3 of 40 forgotten samples score above "
                                                 "every never-seen sample of their audit (about 1.9 expected if they "
                                                 "looked never seen)")


def test_the_report_shows_exposed_samples_and_score_histograms_per_method(tmp_path):
    written = write_report([audited_run(tmp_path)], str(tmp_path / "out"), method_order=["finetune", "lotus"])
    assert_png(written["ulira_scores_0.png"])
    page = open(written["report.html"], encoding="utf-8").read()
    section = page.split("<h2>Membership under U-LiRA")[1].split("<h2>")[0]
    assert "<th>U-LiRA AUC</th>" in section and "<td>lotus</td>" in section  # the membership table, in HTML too
    assert "lotus0-f0 (5.00, s0), lotus1-f0 (4.00, s1), lotus0-f1 (3.00, s0)" in section
    assert re.search(r"<td>lotus</td><td>online</td><td>0, 1</td><td class=\"number\">3 of 40</td>", section)
    assert section.count('src="data:image/png;base64,') == 1  # the histogram sits in its section, embedded
    assert "Variant and score: online: log-likelihood ratio, unlearned vs never seen" in section  # which variant
    assert "must not be trusted" not in section and 'class="warning"' not in section
    assert not re.search(r"https?://", page)
    markdown = open(written["report.md"], encoding="utf-8").read()
    assert "![U-LiRA per-sample scores](ulira_scores_0.png)" in markdown and "Per-sample U-LiRA scores, one" in markdown
    assert "| lotus | online | 0, 1 | 3 of 40 |" in markdown


def test_a_failed_sanity_anchor_marks_its_method_untrusted_everywhere(tmp_path):
    written = write_report([audited_run(tmp_path, lotus_trusted=(True, False))], str(tmp_path / "out"))
    page = open(written["report.html"], encoding="utf-8").read()
    section = page.split("<h2>Membership under U-LiRA")[1].split("<h2>")[0]
    assert '<tr class="untrusted"><td>lotus †</td>' in section
    assert "a sanity anchor FAILED in seed(s) 1: these figures must not be trusted" in section
    assert "Red panels (lotus): a sanity anchor failed in some seed; those histograms must not be trusted" in section
    assert f'<p class="warning">lotus: seed 1: {FAILED_ANCHOR.replace(chr(39), "&#x27;")}</p>' in section
    assert "finetune †" not in section
    markdown = open(written["report.md"], encoding="utf-8").read()
    assert f"**DO NOT TRUST** lotus, seed 1: {FAILED_ANCHOR}" in markdown


def test_no_section_without_audits_and_a_note_for_an_audit_that_is_gone(tmp_path):
    plain = str(tmp_path / "plain")
    for method in ("original", "lotus"):
        append_record(plain, make_record(method, 0, kind="bench"), update_parquet=False)
    written = write_report([plain], str(tmp_path / "plain-out"))
    assert "Membership under U-LiRA" not in open(written["report.html"], encoding="utf-8").read()
    assert not any(name.startswith("ulira_scores") for name in written)

    run = audited_run(tmp_path)
    (tmp_path / "audits" / "finetune-s1" / "ulira.json").unlink()
    written = write_report([run], str(tmp_path / "out"))
    page = open(written["report.html"], encoding="utf-8").read()
    assert "finetune, seed 1: its audit file" in page and "is not there any more" in page
    assert re.search(r"<td>finetune</td><td>online</td><td>0</td>", page)  # the seed left is still shown


def test_score_histograms_skip_empty_panels(tmp_path):
    empty = {"title": "x", "xlabel": "s", "forgotten": np.array([]), "never_seen": np.array([1.0]), "untrusted": False}
    assert plots.score_histograms([empty], str(tmp_path / "none.png")) is None
    one = {**empty, "forgotten": np.array([2.0, 2.0]), "never_seen": np.array([2.0]), "untrusted": True}
    assert_png(plots.score_histograms([one], str(tmp_path / "one.png")))  # equal scores: bins still have a width


def test_scores_spanning_hundreds_get_an_asinh_axis_with_bins_even_on_it():
    linear, asinh = plots._score_bins(np.array([-3.0, 0.0, 5.0])), plots._score_bins(np.array([-250.0, 0.0, 30.0]))
    assert not linear[1] and np.allclose(np.diff(linear[0]), 8.0 / plots.HISTOGRAM_BINS)
    edges, on_asinh = asinh
    assert on_asinh and edges[0] == pytest.approx(-250.0) and edges[-1] == pytest.approx(30.0)
    assert np.allclose(np.diff(np.arcsinh(edges)), np.diff(np.arcsinh(edges))[0])  # equal widths as drawn
    assert (np.diff(edges) > 0).all()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_the_ulira_section_renders_in_a_real_headless_browser(tmp_path):
    write_report([audited_run(tmp_path, lotus_trusted=(True, False))], str(tmp_path / "out"))
    page = (tmp_path / "out" / "report.html").as_uri()
    common = [CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "Membership under U-LiRA" in dom and "lotus0-f0 (5.00, s0)" in dom and "must not be trusted" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1300,4000", f"--screenshot={shot}", page], capture_output=True,
                   timeout=120, check=True)
    assert_png(str(shot))
