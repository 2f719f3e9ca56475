"""Page helpers of the forms benchmark: file-format step, gray conversion, odd layouts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pipeline.templates import Template

G4_THRESHOLD = 140  # as pipeline.synth writes fax pages


def expected_orientation(upside_down: bool, turn: int) -> int:
    """Orientation registration should report: 180 for upside down plus the landscape turn."""
    return ((180 if upside_down else 0) + turn) % 360


def to_scan_gray(
    img: np.ndarray, rng: np.random.Generator, dpi: int
) -> tuple[np.ndarray, int]:
    """A synth page as ingest would hand it over: lossless, JPEG or bilevel (fax pages
    only at 200 dpi and more, like real fax modes), then gray.

    Returns the gray page and how far (degrees clockwise) it was turned to landscape.
    """
    r = rng.random()
    if r < 0.35:
        q = int(rng.integers(60, 93))
        bgr = img[:, :, ::-1] if img.ndim == 3 else img
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok
        dec = np.asarray(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))
        img = dec[:, :, ::-1] if dec.ndim == 3 else dec
    elif r < 0.45 and dpi >= 200:
        g = img if img.ndim == 2 else img.mean(axis=2)
        img = ((g >= G4_THRESHOLD) * 255).astype(np.uint8)
    # Ingest keeps the red channel of colour pages (drops the dropout boxes).
    gray = np.ascontiguousarray(img[:, :, 0]) if img.ndim == 3 else img
    turn = 0
    if rng.random() < 0.1:
        turn = 90 if rng.random() < 0.5 else 270
        gray = np.ascontiguousarray(np.rot90(gray, -1 if turn == 90 else 1))
    return gray, turn


def blank_scan(
    t: Template, blank: np.ndarray, rng: np.random.Generator, dpi: int, color: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """An unfilled form (maybe stamped and scribbled on) scanned by the synth scanner,
    with a truth entry like :func:`pipeline.synth.make_page`'s (every box empty)."""
    from pipeline.scanner import add_stamp, add_stray_marks, sample_scan_params, simulate_scan

    page = blank.copy()
    if rng.random() < 0.5:
        add_stamp(page, t, rng)
    add_stray_marks(page, t, rng)
    params = sample_scan_params(rng, dpi=dpi, color=color)
    img = simulate_scan(page, t, params, rng)
    fields = {
        f.name: {"value": "", "boxes": [] if f.kind == "string" else [None] * f.count,
                 "digits": 0}
        for f in t.fields
    }
    return img, {"template": t.id, "upside_down": params.upside_down, "fields": fields}


def _paper(rng: np.random.Generator, dpi: int = 200) -> np.ndarray:
    w, h = round(210 * dpi / 25.4), round(297 * dpi / 25.4)
    return np.full((h, w), int(rng.integers(235, 256)), np.uint8)


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ang = float(rng.uniform(-3, 3))
    m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), ang, 1.0)
    img = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderValue=230)
    noise = rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def unknown_page(rng: np.random.Generator, templates: Sequence[Template], j: int) -> np.ndarray:
    """A page of a layout that is not a configured template (four kinds, by ``j % 4``).

    0: blank paper; 1: random boxes and text; 2: random boxes with four corner marks but
    no code strip; 3: a configured template's layout printed with a code no template has.
    """
    kind = j % 4
    if kind == 3:
        from pipeline.render import render_blank

        t = templates[j % len(templates)]
        used = {x.code for x in templates}
        code = next(c for c in range(int(rng.integers(1, 250)), 256) if c not in used)
        other = t.model_copy(update={"code": code, "id": f"other{code}"})
        return _finish(render_blank(other, 200.0), rng)
    img = _paper(rng)
    if kind >= 1:
        h, w = img.shape
        for _ in range(int(rng.integers(5, 30))):
            x, y = int(rng.integers(0, w - 400)), int(rng.integers(0, h - 120))
            bw, bh = int(rng.integers(40, 400)), int(rng.integers(40, 120))
            cv2.rectangle(img, (x, y), (x + bw, y + bh), int(rng.integers(0, 170)),
                          int(rng.integers(1, 4)))
        for _ in range(int(rng.integers(2, 12))):
            x, y = int(rng.integers(0, w - 600)), int(rng.integers(60, h))
            cv2.putText(img, "Lorem ipsum 1234", (x, y), cv2.FONT_HERSHEY_SIMPLEX,
                        float(rng.uniform(0.8, 2.5)), 0, 2)
    if kind == 2:
        s, i = round(8 * 200 / 25.4), round(10 * 200 / 25.4)
        h, w = img.shape
        for x, y in ((i, i), (w - i - s, i), (w - i - s, h - i - s), (i, h - i - s)):
            cv2.rectangle(img, (x, y), (x + s, y + s), 0, -1)
    return _finish(img, rng)
