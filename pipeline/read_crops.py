"""Read already-cropped field images (``formdigits read``), no form template needed.

The crop is scaled to the height of a standard box (9 mm at ``WORK_DPI``), placed on a
blank page, and described by a one-field ad-hoc template: ``boxes:N`` becomes a comb of N
equal boxes (walls removed by segmentation), ``string`` a free rectangle. The real
:func:`pipeline.segment.segment_page` then cuts it, exactly as in a batch run, so
``read`` shows what the pipeline would read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.assemble import choose_crops
from pipeline.errors import UsageError
from pipeline.ingest import load_page
from pipeline.normalize import PIECE_FIELD_FILL
from pipeline.recognize import ProbaModel
from pipeline.records import RegisteredPage
from pipeline.settings import Limits
from pipeline.templates import MM_PER_INCH, WORK_DPI, Template

BOX_H_MM = 9.0
_MARGIN_MM = 10.0


@dataclass(frozen=True, slots=True)
class DigitReading:
    """One digit of a crop."""

    position: int
    digit: int
    confidence: float
    top3: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class CropReading:
    """The reading of one field image."""

    file: str
    value: str
    confidence: float | None  # product of the digit confidences; None when empty
    digits: tuple[DigitReading, ...]
    # string images: the whole-string reader's own reading and its probability of ``value``
    string_reader: tuple[str, float] | None = None

    def to_json(self) -> dict[str, object]:
        """Plain JSON-able dict."""
        out: dict[str, object] = {
            "file": self.file, "value": self.value, "confidence": self.confidence,
            "digits": [
                {"position": d.position, "digit": d.digit, "confidence": d.confidence,
                 "top3": [[k, p] for k, p in d.top3]}
                for d in self.digits
            ],
        }
        if self.string_reader is not None:
            out["string_reader"] = {"reading": self.string_reader[0],
                                    "value_probability": self.string_reader[1]}
        return out


def parse_kind(kind: str) -> tuple[str, int]:
    """``"string"`` → ("string", 0); ``"boxes:N"`` → ("comb", N)."""
    if kind == "string":
        return "string", 0
    name, _, n = kind.partition(":")
    if name == "boxes" and n.isdigit() and 1 <= int(n) <= 40:
        return "comb", int(n)
    raise UsageError(f"--kind must be 'string' or 'boxes:N' (N = 1..40), not '{kind}'")


def _mm(px: float) -> float:
    return px * MM_PER_INCH / WORK_DPI


def adhoc_page(gray: np.ndarray, kind: str, n: int) -> tuple[Template, np.ndarray]:
    """A one-field template and a blank page holding the crop where the field is."""
    h, w = gray.shape
    target_h = round(Template.px(BOX_H_MM))
    new_w = max(1, round(w * target_h / h))
    if kind == "comb":  # keep boxes wider than a template allows (> 2 mm)
        new_w = max(new_w, n * round(Template.px(2.5)))
    crop = cv2.resize(gray, (new_w, target_h), interpolation=cv2.INTER_AREA
                      if new_w < w else cv2.INTER_LINEAR)
    fw_mm, fh_mm = _mm(new_w), _mm(target_h)
    spec: dict[str, object] = {"name": "field", "label": "field", "kind": kind,
                               "x_mm": _MARGIN_MM, "y_mm": _MARGIN_MM}
    if kind == "comb":
        spec.update(count=n, box_w_mm=fw_mm / n, box_h_mm=fh_mm, gap_mm=0)
    else:
        # A cut-out string is about as tall as its digits; on a form the writing fills
        # ~0.65 of the field's height, the scale the piece verifier was trained at.
        tall = fh_mm / PIECE_FIELD_FILL
        spec.update(w_mm=fw_mm, h_mm=tall, y_mm=_MARGIN_MM - (tall - fh_mm) / 2,
                    max_digits=40)
    t = Template.model_validate({
        "id": "adhoc", "title": "formdigits read", "code": 0,
        "width_mm": max(60.0, fw_mm + 2 * _MARGIN_MM),
        "height_mm": max(60.0, fh_mm + 2 * _MARGIN_MM), "fields": [spec]})
    pw, ph = t.size_px()
    page = np.full((ph, pw), 255, np.uint8)
    x0 = y0 = round(Template.px(_MARGIN_MM))
    page[y0 : y0 + target_h, x0 : x0 + new_w] = crop
    return t, page


def read_crop_image(path: Path, kind: str, predictor: ProbaModel,
                    limits: Limits | None = None, piece_model: str = "default",
                    string_model: str = "none") -> CropReading:
    """Segment and read one field image (raises an ``InputError`` subclass if unreadable).

    String images have their candidate pieces scored by the piece verifier
    (``piece_model``; 'none' = off), as in the pipeline, and, with a ``string_model``
    ('default' = the shipped one), are also read whole by the string reader
    (``CropReading.string_reader``).
    """
    from pipeline.lines import line_check, line_reader, read_lines
    from pipeline.pieces import piece_scorer, score_pieces
    from pipeline.segment import segment_fields

    shape, n = parse_kind(kind)
    page = load_page(path, 0, limits or Limits.model_validate({}), 150, source=str(path), sha256="")
    template, image = adhoc_page(page.image, shape, n)
    reg = RegisteredPage(key=page.key, template_id=template.id, image=image,
                         homography=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), score=1.0,
                         orientation=0, method="given")
    cut, lines = segment_fields(reg, template)
    crops = [c for c in score_pieces(cut, piece_scorer(piece_model)) if not c.empty]
    if not crops:
        return CropReading(str(path), "", None, ())
    read = read_lines(lines, line_reader(string_model))
    probs_t = predictor.predict_tensor(torch.from_numpy(np.stack([c.pixels for c in crops])))
    probs = probs_t.detach().cpu().numpy() if isinstance(probs_t, torch.Tensor) \
        else np.asarray(probs_t)
    digits = []
    for k, i in enumerate(choose_crops(crops, probs)):
        p = probs[i]
        top = np.argsort(-p, kind="stable")[:3]
        digits.append(DigitReading(
            position=crops[i].position if shape == "comb" else k, digit=int(top[0]),
            confidence=float(p[top[0]]), top3=tuple((int(d), float(p[d])) for d in top)))
    conf = float(np.prod([d.confidence for d in digits]))
    value = "".join(str(d.digit) for d in digits)
    check = line_check(read[0], value) if read else None
    return CropReading(str(path), value, conf, tuple(digits),
                       check[:2] if check is not None else None)
