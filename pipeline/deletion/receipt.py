"""A one-page HTML receipt per deletion request, for a reader who is not an engineer: what was asked, what was
done, the gate's figures with a plain-language verdict, and the chain so far. One self-contained file."""

from __future__ import annotations

from html import escape

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1d2433;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #d8dde6}
.verdict{padding:.8rem 1rem;border-radius:.4rem;font-size:1.05rem;margin:1rem 0}
.accepted{background:#e5f5ea;border:1px solid #2e8b57} .rejected{background:#fdecec;border:1px solid #c0392b}
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


def _verdict_sentence(record: dict) -> str:
    count = record["request"]["ids_count"]
    if record["verdict"] == "accepted":
        return (f"Accepted. The checks below find no sign, beyond what sampling explains, that the model still "
                f"remembers the {count} requested sample(s): a membership-inference attack no longer recognises "
                "them, and the model's predictions on them look like its predictions on data it never saw. It "
                "still works as well as before on everything else. The new model replaces the old one for this "
                "chain.")
    failed = [check["meaning"] for check in record["gate"]["checks"] if not check["passed"]]
    why = (" Not met: " + " ".join(f"{meaning}." for meaning in failed)) if failed else \
        f" The unlearning itself failed: {record.get('reason')}."
    return ("Rejected. The unlearned model did not pass the checks, so it must not be released; it is kept under "
            f"rejected/ as evidence and the model given stays the current one.{why}")


def _checks_table(record: dict) -> str:
    rows = []
    for check in record["gate"]["checks"]:
        mark = '<span class="ok">passed</span>' if check["passed"] else '<span class="fail">failed</span>'
        rows.append(f"<tr><td>{escape(check['meaning'])}</td><td class=num>{_number(check['measured'], 4)}</td>"
                    f"<td class=num>{escape(check['direction'])} {_number(check['limit'], 4)}</td><td>{mark}</td></tr>")
    return ("<table><tr><th>What is checked</th><th>Measured</th><th>Required</th><th></th></tr>"
            + "".join(rows) + "</table>")


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
    return ("<table><tr><th></th><th>Before</th><th>After</th><th>Never-seen samples (after)</th></tr>"
            + body + "</table><p class=muted>Accuracy on the forgotten samples may stay high: unlearning takes away "
            "the model's extra certainty about them (what the checks measure) rather than making it wrong on "
            "them, since a model that never saw them would still classify most of them correctly.</p>")


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
<p>The model was changed with the unlearning method <b>{escape(method['name'])}</b> (seed {method['seed']},
{method['workers']} worker(s)) in {_number(seconds, 1)} seconds from start to verdict, without retraining from
scratch. The original file was not modified.</p>
<table>
<tr><th>Model given</th><td><code>{escape(record['input_model']['uri'])}</code><br>sha256
<code>{escape(record['input_model']['sha256'])}</code><br><span class="muted">trusted by:
{escape(record['input_model']['trusted_by'])}</span></td></tr>
<tr><th>Model produced</th><td><code>{escape(output.get('uri', 'none (the method failed)'))}</code><br>sha256
<code>{escape(output.get('sha256', '—'))}</code></td></tr>
</table>

<h2>The checks</h2>
<p>No retrained model is needed: the forgotten samples are compared with samples the model never saw.</p>
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
