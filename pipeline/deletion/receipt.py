"""A one-page HTML receipt per deletion request, for a reader who is not an engineer: what was asked, what was
done, the gate's figures with a plain-language verdict, and the chain so far. One self-contained file."""

from __future__ import annotations

from html import escape

from pipeline.deletion.chain import ACCEPTED
from pipeline.deletion.gate import FAILED, FORGETTING, NO_POWER, NOT_MEASURED, NOT_VERIFIABLE, PASSED

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1d2433;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #d8dde6}
.verdict{padding:.8rem 1rem;border-radius:.4rem;font-size:1.05rem;margin:1rem 0}
.accepted{background:#e5f5ea;border:1px solid #2e8b57} .rejected{background:#fdecec;border:1px solid #c0392b}
.not_verifiable{background:#fff6df;border:1px solid #b7860b}
table{border-collapse:collapse;width:100%;font-size:.92rem} th,td{padding:.35rem .5rem;border-bottom:1px solid #e6e9ef;
text-align:left;vertical-align:top} th{background:#f4f6f9} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2e8b57;font-weight:600} .fail{color:#c0392b;font-weight:600} code{font-size:.85rem;word-break:break-all}
.muted{color:#5b6475;font-size:.88rem}
"""


def _number(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _short(sha: str | None) -> str:
    return "—" if not sha else sha[:12] + "…"


def _share(value) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


def _deviations(value) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _show(check: dict, key: str) -> str:
    return (_share if check.get("shown") == "rate" else _deviations)(check.get(key))


def _finding(check: dict, shadows: int | None) -> str:
    """The plain-language sentence a forgetting check's figures support, chosen by its outcome and direction."""
    mine, theirs, earlier = (_show(check, key) for key in ("request_value", "reference_value", "input_request_value"))
    outcome, name = check["outcome"], check["check"]
    if outcome == NOT_MEASURED:
        return f"The {name} check could not be made: no never-seen sample of the requested classes to compare with."
    higher = (check["request_value"] or 0) > (check["reference_value"] or 0)
    if name == "accuracy":
        return {
            PASSED: f"The model is right on {mine} of the requested samples and on {theirs} of never-seen samples of "
                    f"the same classes, a difference chance explains (before unlearning: {earlier}).",
            FAILED: f"The model is right on {mine} of the requested samples but on {theirs} of never-seen samples of "
                    f"the same classes: {'more' if higher else 'less'} often than chance explains, so it still treats "
                    "them differently from data it never saw.",
            NO_POWER: f"Accuracy cannot tell here: even before unlearning the model was right on {earlier} of them, "
                      f"against {theirs} of never-seen samples of the same classes, a difference chance explains "
                      "for this few samples."}[outcome]
    if name == "confidence":
        return {
            PASSED: f"Its confidence in their true labels ({mine} on average) is what never-seen samples of the same "
                    f"classes get ({theirs}), within chance (before unlearning: {earlier}).",
            FAILED: (f"It is more confident in their true labels ({mine}) than in those of never-seen samples of the "
                     f"same classes ({theirs}): a sign that it still remembers them." if higher else
                     f"It is less confident in their true labels ({mine}) than in those of never-seen samples of the "
                     f"same classes ({theirs}): the unlearning went past \"never seen\", which marks these samples "
                     "out as well."),
            NO_POWER: f"Confidence cannot tell here: even before unlearning ({earlier}) it was within chance of "
                      f"never-seen samples of the same classes ({theirs})."}[outcome]
    models = f"{shadows} reference models" if shadows else "the reference models"
    return {
        PASSED: f"Sample by sample, against {models} of which half never saw each sample, the model scores them "
                f"{mine} standard deviations from what models that never saw them give, as it scores never-seen "
                f"samples ({theirs}), within chance (before unlearning: {earlier}).",
        FAILED: f"Sample by sample, against {models} of which half never saw each sample, the model scores them "
                f"{mine} standard deviations from what models that never saw them give, {'above' if higher else 'below'}"
                f" never-seen samples ({theirs}) by more than chance explains: "
                + ("signs that it still remembers them." if higher else "the unlearning went past \"never seen\"."),
        NO_POWER: f"The per-sample comparison with {models} cannot tell here: even before unlearning the model scored "
                  f"them {earlier}, within chance of never-seen samples ({theirs})."}[outcome]


def _forgetting(record: dict) -> list[dict]:
    return [check for check in record["gate"]["checks"] if check.get("kind") == FORGETTING]


def _shadows(record: dict) -> int | None:
    return (record["gate"].get("bank") or {}).get("shadows")


def _verdict_sentence(record: dict) -> str:
    count, verdict = record["request"]["ids_count"], record["verdict"]
    findings = {outcome: [_finding(check, _shadows(record)) for check in _forgetting(record)
                          if check["outcome"] == outcome] for outcome in (PASSED, FAILED, NO_POWER, NOT_MEASURED)}
    if verdict == ACCEPTED:
        silent = len(findings[NO_POWER]) + len(findings[NOT_MEASURED])
        return ("Accepted. The checks that can tell a model that trained on these "
                f"{count} sample(s) from one that never saw them find no difference in the new model. "
                + " ".join(findings[PASSED]) + " By these checks, the new model treats the requested samples like "
                "samples it never saw, and it still works as well as before on everything else."
                + (f" ({silent} other check(s) cannot tell on this request and say nothing either way.)" if silent
                   else "") + " The new model replaces the old one for this chain.")
    if verdict == NOT_VERIFIABLE:
        return (f"Not verifiable. No check can tell, on {count} sample(s), a model that trained on them from one that "
                "never saw them: the model before unlearning passes every check as well. So this receipt cannot show "
                "that the model forgot them, and shows nothing to the contrary either. "
                + " ".join(findings[NO_POWER] + findings[NOT_MEASURED] + findings[PASSED])
                + " The new model is kept under unverified/ and not released; the model given stays the current one "
                "and the samples stay in the dataset. To settle the request, ask again with a shadow bank for this "
                "data (unlearn forget --bank), whose per-sample check can judge even one sample, or as part of a "
                "larger request.")
    failed = findings[FAILED] + [f"{check['meaning']}." for check in record["gate"]["checks"]
                                 if check.get("kind") != FORGETTING and not check["passed"]]
    why = (" Not met: " + " ".join(failed)) if failed else f" The unlearning itself failed: {record.get('reason')}."
    return ("Rejected. The unlearned model did not pass the checks, so it must not be released; it is kept under "
            f"rejected/ as evidence and the model given stays the current one.{why}")


OUTCOME_WORDS = {PASSED: ('<span class="ok">no difference</span>'), FAILED: '<span class="fail">differs</span>',
                 NO_POWER: '<span class="muted">cannot tell</span>', NOT_MEASURED: '<span class="muted">not measured'
                 '</span>'}


def _what_was_done(method: dict, seconds) -> str:
    run = f"seed {method['seed']}, {method['workers']} worker(s)"
    if method["name"] == "retrain":
        done = f"The model was retrained from scratch without the requested samples (method <b>retrain</b>, {run})"
    else:
        done = (f"The model was changed with the unlearning method <b>{escape(method['name'])}</b> ({run}), without "
                "retraining from scratch,")
    return f"{done} in {_number(seconds, 1)} seconds from start to verdict."


def _checks_intro(record: dict) -> str:
    alpha = record["gate"]["thresholds"].get("alpha")
    level = (f" A model that truly never saw them differs by more than chance in at most {alpha:.0%} of requests; "
             "each check's share of that is its required p-value.") if alpha else ""
    bank = " and, with the shadow bank, sample by sample" if record["gate"].get("bank") else ""
    return ("<p>No retrained model is needed: the requested samples are compared, class by class" + bank + ", with "
            f"samples the model never saw (the validation split).{escape(level)} A check counts only if it can tell the model "
            "before unlearning, which trained on the samples, from one that never saw them; where it cannot, it says "
            "nothing either way (\"cannot tell\").</p>")


def _required(check: dict) -> str:
    if check["limit"] is None:
        return "(not counted: too few samples to reach its share)"
    return f"(≥ {_number(check['limit'], 4)})"


def _checks_table(record: dict) -> str:
    rows = []
    for check in record["gate"]["checks"]:
        if check.get("kind") == FORGETTING:
            rows.append(f"<tr><td>{escape(check['meaning'])}</td><td class=num>{_show(check, 'request_value')}</td>"
                        f"<td class=num>{_show(check, 'reference_value')}</td>"
                        f"<td class=num>{_show(check, 'input_request_value')}</td>"
                        f"<td class=num>{_number(check['p_value'], 4)} {_required(check)}</td>"
                        f"<td>{OUTCOME_WORDS[check['outcome']]}</td></tr>")
            continue
        mark = '<span class="ok">passed</span>' if check["passed"] else '<span class="fail">failed</span>'
        rows.append(f"<tr><td>{escape(check['meaning'])}</td><td class=num>{_percent(check['measured'])}</td>"
                    f"<td></td><td class=num>{_percent(check.get('input_value'))}</td>"
                    f"<td class=num>{escape(check['direction'])} {_percent(check['limit'])}</td><td>{mark}</td></tr>")
    return ("<table><tr><th>What is checked</th><th>Requested samples (after)</th><th>Never-seen samples</th>"
            "<th>Requested samples (before)</th><th>p-value (required)</th><th></th></tr>" + "".join(rows) + "</table>")


def _before_after_table(record: dict) -> str:
    before, after = record["metrics"]["input"], record["metrics"]["output"] or {}
    rows = [("Accuracy on the forgotten samples", "acc_forget", _percent, "acc_unseen"),
            ("Confidence in their true label", "confidence_forget", _percent, "confidence_unseen"),
            ("Recognised as training data by the attack", "mia", _percent, "mia_unseen"),
            ("Accuracy on the samples it keeps", "acc_retain", _percent, None),
            ("Accuracy on held-out test samples", "acc_test", _percent, None)]
    body = "".join(f"<tr><td>{label}</td><td class=num>{show(before.get(key))}</td>"
                   f"<td class=num>{show(after.get(key))}</td>"
                   f"<td class=num>{show(after.get(unseen)) if unseen else ''}</td></tr>"
                   for label, key, show, unseen in rows)
    return ("<table><tr><th></th><th>Before</th><th>After</th><th>Never-seen samples, all classes (after)</th></tr>"
            + body + "</table><p class=muted>A model that never saw the requested samples would be right on about as "
            "many of them as on never-seen samples of the same classes, and about as confident: the checks above "
            "compare exactly that, class by class. The attack's rates are shown for reference; they are not part of "
            "the verdict.</p>")


def _chain_table(history: list[dict]) -> str:
    rows = "".join(
        f"<tr><td class=num>{r['sequence']}</td><td>{escape(r['created'])}</td><td>{escape(r['request_id'])}</td>"
        f"<td class=num>{r['request']['ids_count']}</td><td>{escape(r['verdict'])}</td>"
        f"<td><code>{_short((r.get('output_model') or {}).get('sha256'))}</code></td>"
        f"<td><code>{_short(r.get('previous_record_sha256'))}</code></td></tr>" for r in history)
    return ("<table><tr><th>#</th><th>When (UTC)</th><th>Request</th><th>Samples</th><th>Verdict</th>"
            "<th>Model produced (sha256)</th><th>Links to previous record (sha256)</th></tr>" + rows + "</table>")


def render_receipt(record: dict, history: list[dict], record_uri: str, record_sha256: str, chain_uri: str) -> str:
    """The receipt of `record`; `history` is every record of the chain up to and including it."""
    request, method = record["request"], record["method"]
    seconds = record["phases"].get("total")
    missing = (f" {request['missing']} listed id(s) were not training samples and were skipped (allowed by the "
               "requester)." if request["missing"] else "")
    output = record.get("output_model") or {}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Deletion request {escape(record['request_id'])}</title>
<style>{STYLE}</style></head><body>
<h1>Deletion request {escape(record['request_id'])}</h1>
<div class="muted">Request {record['sequence']} of the audit chain at <code>{escape(chain_uri)}</code>,
recorded {escape(record['created'])} UTC</div>
<div class="verdict {escape(record['verdict'])}">{escape(_verdict_sentence(record))}</div>

<h2>What was asked</h2>
<p>Forget {request['ids_count']} training sample(s) of the dataset <b>{escape(record['data']['dataset'])}</b>
from the model below.{missing} The list itself is not stored; its fingerprint, keyed with the operator's secret
(HMAC-SHA256 of the sorted ids, key version <code>{escape(record['id_key']['version'])}</code>) so that only the
operator can tell which list it names, is <code>{escape(request['ids_hmac'])}</code>.</p>

<h2>What was done</h2>
<p>{_what_was_done(method, seconds)} The original file was not modified.</p>
<table>
<tr><th>Model given</th><td><code>{escape(record['input_model']['uri'])}</code><br>sha256
<code>{escape(record['input_model']['sha256'])}</code><br><span class="muted">trusted by:
{escape(record['input_model']['trusted_by'])}</span></td></tr>
<tr><th>Model produced</th><td><code>{escape(output.get('uri', 'none (the method failed)'))}</code><br>sha256
<code>{escape(output.get('sha256', '—'))}</code></td></tr>
</table>

<h2>The checks</h2>
{_checks_intro(record)}
{_checks_table(record)}

<h2>Before and after</h2>
{_before_after_table(record)}

<h2>The chain so far</h2>
<p>Each record names the fingerprint of the one before it, so no earlier record can be changed or removed
unnoticed. Anyone can check the whole chain with <code>unlearn audit {escape(chain_uri)}</code>.</p>
{_chain_table(history)}

<p class="muted">This receipt belongs to the record <code>{escape(record_uri)}</code>, sha256
<code>{escape(record_sha256)}</code>.</p>
</body></html>
"""
