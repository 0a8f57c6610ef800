"""One self-contained HTML report: tables, plots as base64 data URIs, inline CSS, no external assets.

A person opens the file from S3 or a laptop in any browser, offline, and sees
everything; nothing is fetched, so the report still works years later.
"""

from __future__ import annotations

import base64
import datetime as dt
import html

from pipeline.results.aggregate import MethodSummary, groups_of
from pipeline.results.exposure import (EXPOSURE_HEADERS, MethodExposure, exposure_caption, exposure_cells,
                                       exposure_sentence)
from pipeline.results.tables import (COLUMNS, TIME_HEADERS, ULIRA_COLUMNS, caption, group_title, table_cells,
                                     time_caption, time_table_cells, ulira_caption, ulira_table_cells, verdict)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f2f2f2; }
p.caption, p.meta { color: #555; font-size: 0.88em; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
p.warning, li.warning, tr.untrusted td { color: #b00020; }
p.warning { font-weight: 600; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_tables(summaries: list[MethodSummary]) -> str:
    if not summaries:
        return "<p>No unlearning records (kinds unlearn/eval/bench) to tabulate.</p>"
    parts = []
    for group in groups_of(summaries):
        members = [s for s in summaries if s.group == group]
        header = "".join(f"<th>{html.escape(text)}</th>" for text in ["Method", *(c.header for c in COLUMNS)])
        rows = []
        for cells in table_cells(members):
            method, *numbers = cells
            tds = [f"<td>{html.escape(method.text)}</td>"]
            for cell in numbers:
                text = html.escape(cell.text)
                tds.append(f'<td class="number">{"<b>" + text + "</b>" if cell.bold else text}</td>')
            rows.append("<tr>" + "".join(tds) + "</tr>")
        caption_text = html.escape(caption(members).replace("**bold**", "bold"))
        parts.append(f"<h3>{html.escape(group_title(members[0]))}</h3>\n<table><thead><tr>{header}</tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>\n<p class=\"caption\">{caption_text}</p>")
    return "\n".join(parts)


def html_time_tables(summaries: list[MethodSummary]) -> str:
    """The where-the-time-went table per group, its caption and one verdict line per method."""
    if not summaries:
        return "<p>No unlearning records to break down.</p>"
    parts = []
    header = "".join(f"<th>{html.escape(text)}</th>" for text in TIME_HEADERS)
    for group in groups_of(summaries):
        members = [s for s in summaries if s.group == group]
        rows = "".join("<tr><td>" + html.escape(method) + "</td>"
                       + "".join(f'<td class="number">{html.escape(text)}</td>' for text in numbers) + "</tr>"
                       for method, *numbers in time_table_cells(members))
        verdicts = "".join(f"<li>{html.escape(verdict(s))}</li>" for s in members)
        parts.append(f"<h3>{html.escape(group_title(members[0]))}</h3>\n<table><thead><tr>{header}</tr></thead>"
                     f"<tbody>{rows}</tbody></table>\n<p class=\"caption\">{html.escape(time_caption())}</p>\n"
                     f"<ul>{verdicts}</ul>")
    return "\n".join(parts)


def _figure(caption_text: str, png: bytes) -> str:
    return (f'<figure><img alt="{html.escape(caption_text)}" src="{data_uri(png)}"><figcaption>'
            f"{html.escape(caption_text)}</figcaption></figure>")


# ---- U-LiRA: membership beside the entropy MIA, and the per-example picture (issue 30) --------------------------

ULIRA_HEADING = "Membership under U-LiRA: which forgotten samples stay exposed"
_WARNING_CLASS = ' class="warning"'


def _group_heading(group: tuple) -> str:
    """tables.group_title's words for a (dataset, model, forget spec) key."""
    dataset, model, forget = group
    return f"{dataset} · {model} · forget {forget}"


def html_membership_table(members: list[MethodSummary]) -> str:
    """The entropy MIA next to U-LiRA's figures for one group (the cells of tables.ulira_table_cells)."""
    header = "".join(f"<th>{html.escape(text)}</th>" for text in ["Method", *(h for h, _, _ in ULIRA_COLUMNS)])
    rows = "".join("<tr><td>" + html.escape(method) + "</td>"
                   + "".join(f'<td class="number">{html.escape(text)}</td>' for text in numbers) + "</tr>"
                   for method, *numbers in ulira_table_cells(members))
    return (f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>\n"
            f'<p class="caption">{html.escape(ulira_caption(members))}</p>')


def html_exposure_table(exposures: list[MethodExposure]) -> str:
    header = "".join(f"<th>{html.escape(text)}</th>" for text in EXPOSURE_HEADERS)
    rows = []
    for exposure in exposures:
        method, variant, seeds, exposed, listed = (html.escape(text) for text in exposure_cells(exposure))
        row_class = ' class="untrusted"' if exposure.untrusted_seeds else ""
        rows.append(f"<tr{row_class}><td>{method}</td><td>{variant}</td><td>{seeds}</td>"
                    f'<td class="number">{exposed}</td><td>{listed}</td></tr>')
    return (f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>\n"
            f'<p class="caption">{html.escape(exposure_caption(exposures))}</p>')


def html_ulira_section(summaries: list[MethodSummary], exposures: list[MethodExposure],
                       figures: dict[tuple, tuple[str, bytes]], notes: list[str] = ()) -> str:
    """Per group: the membership table, one sentence per method from its exposure figures, the exposure table,
    the histogram of per-sample scores (`figures[group]` = (caption, PNG)) and, in red, every failed sanity anchor
    with its warning. Empty when no record carries U-LiRA figures."""
    audited = [g for g in groups_of(summaries) if any(s.mean("ulira_auc") is not None
                                                      for s in summaries if s.group == g)]
    groups = sorted(set(audited) | {e.group for e in exposures})
    if not groups and not notes:
        return ""
    parts = [f"<h2>{html.escape(ULIRA_HEADING)}</h2>"]
    for group in groups:
        members = [s for s in summaries if s.group == group]
        mine = [e for e in exposures if e.group == group]
        parts.append(f"<h3>{html.escape(_group_heading(group))}</h3>")
        if members and group in audited:
            parts.append(html_membership_table(members))
        if mine:
            parts.append("<ul>" + "".join(f"<li{_WARNING_CLASS if e.untrusted_seeds else ''}>"
                                          f"{html.escape(exposure_sentence(e))}</li>" for e in mine) + "</ul>")
            parts.append(html_exposure_table(mine))
        if group in figures:
            parts.append(_figure(*figures[group]))
        warnings = [f"{e.method}: {w}" for e in mine if e.untrusted_seeds for w in e.warnings]
        parts.extend(f'<p class="warning">{html.escape(w)}</p>' for w in warnings)
    if notes:
        parts.append("<p>Audits not shown:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(parts)


def render_html(title: str, run_uris: list[str], summaries: list[MethodSummary], images: dict[str, bytes],
                sections: list[tuple[str, str]] = (), generated: str | None = None, ulira: str = "") -> str:
    """The report page. `images` maps a caption to PNG bytes; `sections` are (heading, preformatted text);
    `ulira` is the U-LiRA section's HTML (html_ulira_section), placed after the time tables."""
    generated = generated or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    runs = "".join(f"<li><code>{html.escape(uri)}</code></li>" for uri in run_uris)
    figures = "\n".join(_figure(name, png) for name, png in images.items())
    extra = "\n".join(f"<h2>{html.escape(heading)}</h2>\n<pre>{html.escape(text)}</pre>" for heading, text in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">Generated {html.escape(generated)} from:</p>
<ul>{runs}</ul>
<h2>Results</h2>
{html_tables(summaries)}
<h2>Where the time went</h2>
{html_time_tables(summaries)}
{ulira}
{extra}
<h2>Plots</h2>
{figures or "<p>No plots: the records hold no timings or metrics to plot.</p>"}
</body>
</html>
"""
