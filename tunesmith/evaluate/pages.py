"""Reports as Markdown and as one self-contained HTML page: a title, an intro, then sections of text, a table and a
plot ({"title", "text": [...], "table": (head, rows), "image": "name.png"}). Used by compare and by tune."""

from __future__ import annotations

import base64
import html
import io

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
    "th{background:#f3f3f3}.verdict{font-size:1.15em;font-weight:600}img{max-width:100%}code{background:#f3f3f3}"
)


def markdown_page(title: str, intro: str, sections: list[dict], images: list[str], captions: dict[str, str]) -> str:
    lines = [f"# {title}", "", intro, ""]
    for s in sections:
        lines += [f"## {s['title']}", ""] + [*(f"{t}  " for t in s.get("text", []))] + ([""] if s.get("text") else [])
        if s.get("table"):
            head, rows = s["table"]
            lines += ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows] + [""]
        if s.get("image") in images:
            lines += [f"![{captions[s['image']]}]({s['image']})", ""]
    return "\n".join(lines)


def html_page(
    title: str, intro_html: str, sections: list[dict], pngs: dict[str, bytes], captions: dict[str, str], emphasis=()
) -> str:
    """`intro_html` is trusted markup; everything else is escaped. Sections titled in `emphasis` print larger."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p>{intro_html}</p>"]
    for s in sections:
        body.append(f"<h2>{e(s['title'])}</h2>")
        body += [f"<p{' class=verdict' if s['title'] in emphasis else ''}>{e(t)}</p>" for t in s.get("text", [])]
        if s.get("table"):
            head, rows = s["table"]
            body.append(
                "<table><tr>"
                + "".join(f"<th>{e(str(h))}</th>" for h in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                + "</table>"
            )
        if s.get("image") in pngs:
            data = base64.b64encode(pngs[s["image"]]).decode()
            caption = e(captions[s["image"]])
            body.append(
                f"<figure><img alt='{caption}' src='data:image/png;base64,{data}'><figcaption>{caption}</figcaption></figure>"
            )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(w, h))


def png(plt, fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
