"""Debug pictures: the registered page with fields, digit crops and readings drawn on it.

Written by the pipeline for every page when ``--debug DIR`` is set, so a person can see at
a glance whether registration, segmentation and reading went right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import OutputError
from pipeline.records import FieldCrop, RegisteredPage
from pipeline.templates import Template

FIELD_BGR = (200, 120, 0)  # blue: field outlines
DIGIT_BGR = (0, 160, 0)  # green: digit crops
DOUBT_BGR = (0, 140, 255)  # orange: crops with segmentation flags or alternative splits
EMPTY_BGR = (180, 180, 180)
TEXT_BGR = (0, 0, 220)  # red: readings


def _rect(img: np.ndarray, r: tuple[float, float, float, float], color: tuple[int, int, int],
          thick: int = 1) -> None:
    x, y, w, h = (round(v) for v in r)
    cv2.rectangle(img, (x, y), (x + w, y + h), color, thick, cv2.LINE_AA)


def draw_debug(
    reg: RegisteredPage,
    template: Template,
    crops: Sequence[FieldCrop],
    predictions: Mapping[str, str] | None = None,
) -> np.ndarray:
    """The registered page (BGR) with field boxes, digit crops and readings drawn.

    Args:
        reg: the registered page (template pixels).
        template: its template.
        crops: the crops of :func:`pipeline.segment.segment_page`.
        predictions: optional field name -> reading (e.g. ``"04127"``; ``""`` = empty).
    """
    img = cv2.cvtColor(reg.image, cv2.COLOR_GRAY2BGR)
    for f in template.fields:
        x, y, w, h = (template.px(v) for v in f.bounds_mm())
        _rect(img, (x - 2, y - 2, w + 4, h + 4), FIELD_BGR, 1)
        cv2.putText(img, f.name, (round(x), round(y) - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    FIELD_BGR, 1, cv2.LINE_AA)
        if predictions is not None and f.name in predictions:
            cv2.putText(img, predictions[f.name] or "(empty)", (round(x + w) + 6, round(y + h)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.7, TEXT_BGR, 2, cv2.LINE_AA)
    for c in crops:
        if c.empty:
            color = EMPTY_BGR
        elif c.flags or c.split:
            color = DOUBT_BGR
        else:
            color = DIGIT_BGR
        _rect(img, c.bbox, color, 1)
        if c.split:
            # Alternative split hypotheses overlap; label each with group.split.
            cv2.putText(img, f"{c.group}.{c.split}", (c.bbox[0], c.bbox[1] + c.bbox[3] + 10),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.3, color, 1, cv2.LINE_AA)
    banner = (f"{reg.key.source} p{reg.key.page}  {reg.template_id}  score {reg.score:.2f}  "
              f"rot {reg.orientation}  {reg.method}")
    cv2.putText(img, banner, (10, img.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, TEXT_BGR,
                1, cv2.LINE_AA)
    return img


def write_debug(
    path: str | Path,
    reg: RegisteredPage,
    template: Template,
    crops: Sequence[FieldCrop],
    predictions: Mapping[str, str] | None = None,
) -> Path:
    """Draw the debug picture and write it (PNG/JPEG by suffix); returns the path."""
    p = Path(path)
    img = draw_debug(reg, template, crops, predictions)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(p.suffix or ".png", img)
        if not ok:
            raise OutputError(f"cannot encode debug picture {p}")
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(buf.tobytes())
        tmp.replace(p)
    except OSError as exc:
        raise OutputError(f"cannot write debug picture {p}: {exc}") from exc
    return p
