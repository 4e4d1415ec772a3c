"""Self-contained HTML pages: one file, images inlined as base64, no scripts, no external resources.

Small building blocks (:func:`table`, :func:`image`, :func:`section`, :func:`page`) that report builders of any
experiment kind compose; every piece of text is escaped.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Iterable, Sequence

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #1d1d1f; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; } .note { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
.badge { display: inline-block; padding: 2px 8px; border-radius: 10px; font-size: 12px; color: white; }
.ok { background: #2e7d32; } .bad { background: #c62828; } .warn { background: #ef6c00; } .info { background: #37474f; }
figure { margin: 10px 0 18px 0; } figcaption { font-size: 13px; color: #444; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f9; padding: 8px; font-size: 12px; overflow-x: auto; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def image(path: str | Path, caption: str | None = None, alt: str = "figure") -> str:
    """A ``<figure>`` with the PNG at ``path`` inlined as base64 (missing files give a visible note)."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">(figure {esc(path.name)} is missing)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (),
          nowrap: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped, columns in ``numeric`` are right-aligned, those in ``nowrap`` not wrapped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="{"num" if i in numeric else "nowrap" if i in nowrap else ""}">{esc(v)}</td>'
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def badge(text: str, kind: str = "ok") -> str:
    return f'<span class="badge {esc(kind)}">{esc(text)}</span>'


def section(title: str, *parts: str) -> str:
    return f"<h2>{esc(title)}</h2>" + "".join(parts)


def paragraph(text: str, cls: str | None = None) -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def page(title: str, subtitle: str, body: Sequence[str]) -> str:
    """A complete HTML document (already-escaped ``body`` fragments from the helpers above)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>"
            + "".join(body) + "</body></html>\n")
