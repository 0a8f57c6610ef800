"""One self-contained HTML report: tables, plots as base64 data URIs, inline CSS, no external assets.

A person opens the file from S3 or a laptop in any browser, offline, and sees
everything; nothing is fetched, so the report still works years later.
"""

from __future__ import annotations

import base64
import datetime as dt
import html

from pipeline.results.aggregate import MethodSummary, groups_of
from pipeline.results.tables import (COLUMNS, TIME_HEADERS, caption, group_title, table_cells, time_caption,
                                     time_table_cells, verdict)

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


def render_html(title: str, run_uris: list[str], summaries: list[MethodSummary], images: dict[str, bytes],
                sections: list[tuple[str, str]] = (), generated: str | None = None) -> str:
    """The report page. `images` maps a caption to PNG bytes; `sections` are (heading, preformatted text)."""
    generated = generated or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    runs = "".join(f"<li><code>{html.escape(uri)}</code></li>" for uri in run_uris)
    figures = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="{data_uri(png)}"><figcaption>{html.escape(name)}'
        "</figcaption></figure>" for name, png in images.items())
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
{extra}
<h2>Plots</h2>
{figures or "<p>No plots: the records hold no timings or metrics to plot.</p>"}
</body>
</html>
"""
