"""A self-contained HTML audit report of a results folder.

One file, no external references: CSS inline, charts rendered by matplotlib to PNG and
embedded as base64 ``data:`` URIs like the digit crops, so the report can be mailed or
archived and still shows everything offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.errors import OutputError
from pipeline.review import (
    crop_index,
    encode_png,
    field_strip,
    latest,
    latest_digits,
    latest_fields,
)
from pipeline.review import read_table as _read

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .5rem}
th{background:#eef1f5;text-align:left} td.num{text-align:right}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem .9rem;min-width:8rem}
.card b{display:block;font-size:1.4rem}
.gallery{display:flex;flex-wrap:wrap;gap:.8rem}
.item{border:1px solid #ddd;border-radius:6px;padding:.4rem;font-size:.85rem;max-width:22rem}
.item img{image-rendering:pixelated;background:#000;display:block;margin-bottom:.3rem}
.review{color:#b35c00} .muted{color:#777}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fig_png(draw: Callable[[Axes], None], size: tuple[float, float] = (6.0, 3.2)) -> bytes:
    """Render a chart with matplotlib's object API (no pyplot: no global backend state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    ax = fig.add_subplot()
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _img(png: bytes, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{_data_uri(png)}" alt="{html.escape(alt)}"{w}>'


def _table(df: pd.DataFrame) -> str:
    if df.empty:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            num = isinstance(v, int | float | np.number) and not isinstance(v, bool)
            text = f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
            cells.append(f"<td{' class=num' if num else ''}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _cards(items: list[tuple[str, object]]) -> str:
    out = []
    for label, v in items:
        text = f"{v:.1%}" if isinstance(v, float) else str(v)
        out.append(f'<div class="card"><b>{html.escape(text)}</b>{html.escape(label)}</div>')
    return f'<div class="cards">{"".join(out)}</div>'


def build_report(out_dir: str | Path, *, gallery: int = 40) -> str:
    """The report's HTML text for ``out_dir``."""
    fields = latest_fields(out_dir)
    pages = latest(_read(out_dir, "pages"), ["file_sha256", "page"])
    errors = _read(out_dir, "errors")
    corrections = _read(out_dir, "corrections")
    digits = latest_digits(out_dir)
    status = fields["status"].value_counts() if not fields.empty else pd.Series(dtype=int)
    n_fields = len(fields)
    review = int(status.get("needs_review", 0))
    models = fields["model_version"].dropna().unique()
    threshold = _review_below(Path(out_dir))
    parts: list[str] = [
        f"<h1>formdigits audit report</h1><p class=muted>{html.escape(str(out_dir))} · "
        f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · runs: "
        f"{html.escape(', '.join(sorted(map(str, fields['run_id'].dropna().unique()))) or '-')}"
        f" · model: {html.escape(', '.join(map(str, models)) or '-')}"
        "</p>",
        "<h2>Summary</h2>",
        _cards(
            [
                ("pages", len(pages)),
                ("pages read", int((pages["status"] == "read").sum()) if not pages.empty else 0),
                ("errors", len(errors)),
                ("fields", n_fields),
                ("accepted", int(status.get("accepted", 0))),
                ("needs review", review),
                ("empty", int(status.get("empty", 0))),
                ("review rate", review / n_fields if n_fields else 0.0),
                ("corrected by rules", int(fields["corrected"].fillna(False).astype(bool).sum())),
                ("corrections stored", len(corrections)),
            ]
        ),
    ]
    if n_fields:
        conf = fields.loc[fields["status"] != "empty", "confidence"].astype(float).to_numpy()

        def hist(ax: Axes) -> None:
            ax.hist(conf, bins=[i / 40 for i in range(41)], color="#4c72b0")
            ax.set_xlabel("field confidence")
            ax.set_ylabel("fields")
            if threshold is not None:
                ax.axvline(threshold, color="#c44e52", linestyle="--", label="review_below")
                ax.legend(loc="upper left")
            if len(conf) > 200:  # a log axis only helps once the accepted peak dwarfs the rest
                ax.set_yscale("log")

        rates = (fields["status"] == "needs_review").groupby(fields["field"]).mean().sort_values()

        def bars(ax: Axes) -> None:
            ax.barh(rates.index.astype(str), rates.to_numpy(), color="#dd8452")
            ax.set_xlabel("review rate")
            ax.set_xlim(0, 1)

        counts = status.reindex(["accepted", "needs_review", "empty"], fill_value=0)

        def status_bars(ax: Axes) -> None:
            ax.bar(counts.index, counts.to_numpy(), color=["#55a868", "#dd8452", "#999999"])
            ax.set_ylabel("fields")

        parts += [
            "<h2>Field confidence</h2>",
            _img(_fig_png(hist), "confidence histogram"),
            "<h2>Review rate per field</h2>",
            _img(_fig_png(bars, (6.0, max(2.0, 0.3 * len(rates) + 1))), "review rate per field"),
            "<h2>Status counts</h2>",
            _img(_fig_png(status_bars, (4.5, 3.0)), "status counts"),
            _table(counts.rename_axis("status").reset_index(name="fields")),
        ]
    parts += [
        "<h2>Errors</h2>",
        _table(
            errors[["source", "page", "error_type", "message", "hint"]]
            if not errors.empty
            else errors
        ),
    ]
    parts += ["<h2>Lowest-confidence fields</h2>", _gallery(fields, digits, gallery)]
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>formdigits report</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def _review_below(out: Path) -> float | None:
    """The run's review threshold from OUT/settings.json (None when absent or unreadable)."""
    try:
        return float(json.loads((out / "settings.json").read_text("utf-8"))["review_below"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _gallery(fields: pd.DataFrame, digits: pd.DataFrame, n: int) -> str:
    if fields.empty:
        return '<p class="muted">no fields</p>'
    low = fields[fields["value"].fillna("") != ""].sort_values("confidence").head(n)
    index = crop_index(digits)
    items = []
    for f in low.itertuples():
        _, crops = index.get((str(f.file_sha256), int(f.page), str(f.field)), ([], []))
        img = _img(encode_png(field_strip(crops, 2)), f"{f.field} crops") if crops else ""
        alts = (
            ", ".join(
                f"{a} ({c:.3g})"
                for a, c in zip(f.alternatives, f.alternative_confidences, strict=False)
            )
            or "-"
        )
        cls = "review" if f.status == "needs_review" else ""
        items.append(
            f'<div class="item">{img}<b>{html.escape(str(f.value))}</b> '
            f'<span class="{cls}">{float(f.confidence):.3f} · {html.escape(str(f.status))}</span>'
            f"<br>{html.escape(str(f.source))} p{int(f.page)} · {html.escape(str(f.field))}"
            f"<br>raw {html.escape(str(f.raw_value))} · alternatives: {html.escape(alts)}"
            f"<br><span class=muted>{html.escape(', '.join(f.reasons))}</span></div>"
        )
    return f'<div class="gallery">{"".join(items)}</div>'


def write_report(out_dir: str | Path, dest: str | Path, *, gallery: int = 40) -> Path:
    """Write the HTML report of ``out_dir`` to ``dest`` atomically; returns ``dest``."""
    dest = Path(dest)
    text = build_report(out_dir, gallery=gallery)
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {dest}: {exc}") from exc
    return dest
