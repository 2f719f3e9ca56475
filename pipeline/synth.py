"""Synthetic filled scans with ground truth (``formdigits synth``).

Each page: a template rendered at 300 dpi in colour, filled with valid random values
written with real handwritten digits (:mod:`pipeline.handwriting`), stamped and scribbled
on, then "scanned" (:mod:`pipeline.scanner`). Pages are saved as single PNG/JPEG files,
a multi-page TIFF (deflate), a bilevel CCITT G4 TIFF (fax-like) and a multi-page PDF.
``OUT/truth/<file-stem>.json`` describes every page of every file (format: see the shared
conventions). Everything is a pure function of the seed: page ``i`` draws from
``numpy.random.default_rng([seed, i])``, the file plan from its own stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import OutputError, UsageError
from pipeline.handwriting import FILL_DPI, DigitBank, boxes_for, fill_page, sample_pen
from pipeline.scanner import add_stamp, add_stray_marks, sample_scan_params, simulate_scan
from pipeline.synth_values import generate_value
from pipeline.templates import Template

FORMATS = ("png", "jpg", "tiff", "pdf")
EMPTY_OPTIONAL_PROB = 0.3
STAMP_PROB = 0.5
MAX_MULTI_PAGES = 10
G4_THRESHOLD = 140  # below the dropout grey (168): fax pages lose the boxes, keep the ink
_PLAN_STREAM = 7_000_001
_FIXED_PDF_TIME = time.gmtime(0)  # PDF dates fixed so files are byte-identical per seed


@dataclass(frozen=True)
class FilePlan:
    """One output file: its name, format and which global page indices it holds."""

    name: str  # file name with extension
    fmt: str  # png | jpg | tiff | g4 | pdf
    pages: tuple[int, ...]
    dpi: int
    colors: tuple[bool, ...]  # per page: colour (RGB) or grayscale


@dataclass
class SynthResult:
    """What :func:`synthesize` wrote."""

    files: list[Path] = field(default_factory=list)
    truth_files: list[Path] = field(default_factory=list)
    pages: int = 0
    seconds: float = 0.0


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """Validate a comma-separated format list (``jpeg``/``tif`` accepted as aliases)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    alias = {"jpeg": "jpg", "tif": "tiff"}
    out: list[str] = []
    for raw in items:
        f = alias.get(raw.strip().lower(), raw.strip().lower())
        if not f:
            continue
        if f not in FORMATS:
            raise UsageError(f"unknown output format '{raw}'", hint=f"Use {', '.join(FORMATS)}.")
        if f not in out:
            out.append(f)
    if not out:
        raise UsageError("no output format given", hint=f"Use {', '.join(FORMATS)}.")
    return tuple(out)


def plan_files(n_pages: int, formats: Sequence[str], seed: int,
               dpi_range: tuple[int, int] = (150, 300)) -> list[FilePlan]:
    """Split ``n_pages`` pages over output files (deterministic in ``seed``).

    Each multi-page format gets about a sixth of the pages (at least 2), in files of at most
    :data:`MAX_MULTI_PAGES`; TIFF also gets fax-style G4 files (a twelfth); the rest become
    single PNG/JPEG pages, or further multi-page files when no single-page format was asked.
    """
    rng = np.random.default_rng([seed, _PLAN_STREAM])
    lo, hi = dpi_range

    def dpi() -> int:
        return int(rng.integers(lo, hi + 1))

    plans: list[FilePlan] = []
    nxt = 0

    def take(k: int) -> tuple[int, ...]:
        nonlocal nxt
        k = max(0, min(k, n_pages - nxt))
        idx = tuple(range(nxt, nxt + k))
        nxt += k
        return idx

    def add_multi(fmt: str, k: int) -> None:
        pages = take(k)
        if not pages:
            return
        if fmt == "g4":
            colors = tuple(False for _ in pages)
        else:
            colors = tuple(bool(rng.random() < (0.5 if fmt == "pdf" else 0.3)) for _ in pages)
        ext = "pdf" if fmt == "pdf" else "tif"
        stem = {"pdf": "batch", "tiff": "batch", "g4": "fax"}[fmt]
        count = sum(1 for p in plans if p.fmt == fmt)
        plans.append(FilePlan(f"{stem}_{fmt}_{count:02d}.{ext}", fmt, pages, dpi(), colors))

    multi = [f for f in formats if f in ("pdf", "tiff")]
    single = [f for f in formats if f in ("png", "jpg")]
    k = max(2, n_pages // 6)
    for fmt in multi:
        # Pages of one file are held in memory until it is written: cap the file length.
        for start in range(0, k, MAX_MULTI_PAGES):
            add_multi(fmt, min(MAX_MULTI_PAGES, k - start))
        if fmt == "tiff":
            g4 = max(1, n_pages // 12)
            for start in range(0, g4, MAX_MULTI_PAGES):
                add_multi("g4", min(MAX_MULTI_PAGES, g4 - start))
    while nxt < n_pages:
        if single:
            fmt = single[int(rng.integers(0, len(single)))]
            # Colour pages go to JPEG (as scanners do); PNG pages are 8-bit grayscale.
            color = fmt == "jpg" and bool(rng.random() < 0.75)
            (i,) = take(1)
            plans.append(FilePlan(f"scan_{i:04d}.{fmt}", fmt, (i,), dpi(), (color,)))
        else:
            add_multi(multi[len(plans) % len(multi)], min(MAX_MULTI_PAGES, k))
    return plans


def _value_truth(t: Template, values: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in t.fields:
        v = values.get(f.name, "")
        boxes = [] if f.kind == "string" else boxes_for(f, v)
        out[f.name] = {"value": v, "boxes": boxes, "digits": len(v)}
    return out


def make_page(t: Template, blank: np.ndarray, bank: DigitBank, rng: np.random.Generator, *,
              dpi: int, color: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """One filled, scanned page and its truth entry (without the ``page`` index)."""
    values: dict[str, str] = {}
    for f in t.fields:
        empty = not f.required and rng.random() < EMPTY_OPTIONAL_PROB
        values[f.name] = "" if empty else generate_value(f, rng)
    page = blank.copy()
    fill_page(page, t, values, bank, sample_pen(rng, color), rng)
    if rng.random() < STAMP_PROB:
        add_stamp(page, t, rng)
    add_stray_marks(page, t, rng)
    params = sample_scan_params(rng, dpi=dpi, color=color)
    img = simulate_scan(page, t, params, rng, FILL_DPI)
    truth = {
        "template": t.id,
        "rotation_deg": round(params.rotation_deg, 3),
        "upside_down": params.upside_down,
        "dpi": params.dpi,
        "fields": _value_truth(t, values),
    }
    return img, truth


def _to_pil(img: np.ndarray, bilevel: bool = False) -> Any:
    from PIL import Image

    if bilevel:
        gray = img if img.ndim == 2 else img.mean(axis=2).astype(np.uint8)
        return Image.fromarray(((gray >= G4_THRESHOLD) * 255).astype(np.uint8)).convert(
            "1", dither=Image.Dither.NONE)
    return Image.fromarray(img)


def write_file(path: Path, plan: FilePlan, images: list[np.ndarray], seed: int) -> None:
    """Write the pages of one plan in its format (JPEG quality drawn from the seed)."""
    rng = np.random.default_rng([seed, _PLAN_STREAM, *plan.pages])
    d = (plan.dpi, plan.dpi)
    pil = [_to_pil(im, plan.fmt == "g4") for im in images]
    try:
        if plan.fmt == "png":
            pil[0].save(path, "PNG", dpi=d, compress_level=6)
        elif plan.fmt == "jpg":
            pil[0].save(path, "JPEG", dpi=d, quality=int(rng.integers(60, 93)))
        elif plan.fmt in ("tiff", "g4"):
            comp = "group4" if plan.fmt == "g4" else "tiff_deflate"
            pil[0].save(path, "TIFF", save_all=True, append_images=pil[1:], compression=comp,
                        dpi=d)
        else:
            pil[0].save(path, "PDF", save_all=True, append_images=pil[1:], dpi=d,
                        quality=int(rng.integers(70, 93)), title=path.stem,
                        creationDate=_FIXED_PDF_TIME, modDate=_FIXED_PDF_TIME)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc


def check_out_dir(out: str | Path, overwrite: bool) -> list[Path]:
    """Truth files of a synthetic set already in ``out``; raises UsageError unless
    ``overwrite`` when there are any."""
    truth = Path(out) / "truth"
    old = sorted(truth.glob("*.json")) if truth.is_dir() else []
    if old and not overwrite:
        raise UsageError(f"{out} already holds a synthetic set ({len(old)} truth files)",
                         hint="Pass --force to replace it, or choose another --out folder.")
    return old


def _clear_old_set(out: Path, overwrite: bool) -> None:
    for tpath in check_out_dir(out, overwrite):
        try:
            data = json.loads(tpath.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        name = str(data.get("file", "")) if isinstance(data, dict) else ""
        try:
            if name and Path(name).name == name:  # never follow paths out of the folder
                (out / name).unlink(missing_ok=True)
            tpath.unlink()
        except OSError as exc:
            raise OutputError(f"cannot remove the old synthetic set in {out}: {exc}") from exc


def load_bank(digits: str, split: str = "test") -> DigitBank:
    """Handwritten digits from any source ``models.datasets.load_digits`` accepts."""
    from models.datasets import load_digits

    ds = load_digits(digits, split)
    return DigitBank.from_arrays(ds.images, ds.labels)


def synthesize(templates: Sequence[Template], bank: DigitBank, out_dir: str | Path, *,
               pages: int, seed: int = 0, formats: Sequence[str] = FORMATS,
               dpi_range: tuple[int, int] = (150, 300), overwrite: bool = False,
               on_page: Callable[[int], None] | None = None) -> SynthResult:
    """Write ``pages`` synthetic scans of ``templates`` and their truth files into ``out_dir``.

    Page ``i`` uses template ``templates[i % len(templates)]``. ``on_page`` is called after
    each page (progress reporting). A folder that already holds a synthetic set is refused
    unless ``overwrite``; then the old set (truth files and the files they name, nothing
    else) is removed first, so truth and files never disagree.
    """
    from pipeline.render import render_blank

    if pages < 1:
        raise UsageError("--pages must be at least 1")
    if not templates:
        raise UsageError("no template to synthesize")
    lo, hi = dpi_range
    if not 50 <= lo <= hi <= 600:
        raise UsageError(f"bad dpi range {lo}-{hi}", hint="Use e.g. 150-300 (50 to 600).")
    out = Path(out_dir)
    truth_dir = out / "truth"
    _clear_old_set(out, overwrite)
    try:
        truth_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {truth_dir}: {exc}") from exc
    t0 = time.perf_counter()
    blanks = {t.id: render_blank(t, FILL_DPI, color=True) for t in templates}
    result = SynthResult()
    for plan in plan_files(pages, parse_formats(formats), seed, dpi_range):
        images: list[np.ndarray] = []
        entries: list[dict[str, Any]] = []
        for j, (i, color) in enumerate(zip(plan.pages, plan.colors, strict=True)):
            t = templates[i % len(templates)]
            rng = np.random.default_rng([seed, i])
            img, truth = make_page(t, blanks[t.id], bank, rng, dpi=plan.dpi, color=color)
            images.append(img)
            entries.append({"page": j, **truth})
            if on_page is not None:
                on_page(i)
        path = out / plan.name
        write_file(path, plan, images, seed)
        tpath = truth_dir / f"{path.stem}.json"
        tpath.write_text(json.dumps({"file": plan.name, "pages": entries}, indent=1) + "\n",
                         encoding="utf-8")
        result.files.append(path)
        result.truth_files.append(tpath)
        result.pages += len(plan.pages)
    result.seconds = time.perf_counter() - t0
    return result
