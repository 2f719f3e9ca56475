"""Segmentation: cut every field of a registered page into digit crops.

Per field: cut the region (with a margin) from the registered page, estimate the paper
background (grey closing) and turn the page into *ink* (background minus gray, bright on
dark), subtract a model of the printed box walls measured at their known positions (each
wall's own cross profile, :mod:`pipeline.segment_walls`; ink over a wall is scaled back to
full contrast, so strokes that cross or run along a wall survive and colour scans, whose
walls dropped out, lose nothing),
binarize relative to the field's own ink level, drop specks and wall residue, keep faint
stroke parts next to strokes (boxed fields), then

- ``boxes``/``comb``/``date``: give each box the connected components that lie mostly
  inside it (their overrun parts included) and decide empty vs written;
- ``string``: see :mod:`pipeline.segment_string` (groups and split hypotheses).

Every crop's pixels are :func:`pipeline.normalize.normalize_digit` of the extracted ink,
the same function training uses. :func:`field_pieces` exposes the extracted ink.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.normalize import (
    BOX_LINE_WIDTH,
    INPUT_SIZE,
    LINE_HEIGHT,
    LINE_WIDTH,
    PIECE_FIELD_FILL,
    normalize_digit,
    normalize_line,
    normalize_piece,
)
from pipeline.order_stats import percentile
from pipeline.records import FieldCrop, FieldLine, RegisteredPage
from pipeline.segment_walls import field_geometry, wall_model
from pipeline.templates import FormField, Template

MARGIN_MM = 3.0
_KERNEL3 = np.ones((3, 3), np.uint8)
MIN_INK = 25.0  # lowest ink contrast (0-255) that can count as a stroke
MIN_SPECK_PX = 8  # components smaller than this are scanner noise
BOX_DIGIT_FILL = 0.78  # share of a box's height that handwriting takes (box_piece_height)
EMPTY_AREA_PX = 15  # a box holding less ink than this (pixels) is empty
EMPTY_EXTENT = 0.15  # ... or whose ink spans less than this fraction of the box height


@dataclass(frozen=True)
class Piece:
    """One digit candidate before normalization: its ink and where it came from."""

    position: int
    bbox: tuple[int, int, int, int]  # template px
    ink: np.ndarray = field(repr=False)  # uint8 ink bright on black, cropped
    empty: bool = False
    flags: tuple[str, ...] = ()
    group: int = 0
    split: int = 0


@dataclass(frozen=True)
class FieldInk:
    """A field's region after binarization and wall removal (region coordinates)."""

    origin: tuple[int, int]  # template px of the region's top-left corner
    ink: np.ndarray  # float32 ink (0 = paper)
    binary: np.ndarray  # uint8 0/1 strokes, walls removed, specks dropped
    labels: np.ndarray  # component labels of ``binary`` (uint16, or int32 if large)
    stats: np.ndarray  # cv2 component stats
    walls: np.ndarray  # uint8 0/1: pixels removed as printed walls
    boxes: list[tuple[int, int, int, int]]  # box rects in region px


def string_field_height(f: FormField) -> float:
    """Height in template px of a string field's rectangle (the scale of its pieces)."""
    return float(round(Template.px(f.boxes_mm()[0][3])))


def box_piece_height(f: FormField) -> float:
    """The string-field height at which a boxed field's digits have a string digit's size.

    Handwriting fills ~78 % of a box's height (0.6-0.95 in the synthesizer, as on real
    forms), a string field's digits PIECE_FIELD_FILL of its height: scaled by this, a box
    digit reaches the piece verifier at the size it was trained on.
    """
    return float(round(Template.px(f.boxes_mm()[0][3]) * BOX_DIGIT_FILL / PIECE_FIELD_FILL))


def field_region(t: Template, f: FormField) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the template px segmentation reads for field ``f`` (its
    bounds and a MARGIN_MM margin, clipped to the page)."""
    x, y, w, h = f.bounds_mm()
    m = MARGIN_MM
    W, H = t.size_px()
    x0, y0 = max(0, int(t.px(x - m))), max(0, int(t.px(y - m)))
    x1, y1 = min(W, int(np.ceil(t.px(x + w + m)))), min(H, int(np.ceil(t.px(y + h + m))))
    return x0, y0, x1, y1


def read_regions(t: Template) -> list[tuple[int, int, int, int]]:
    """Every region segmentation reads on a page of template ``t`` (see
    :func:`pipeline.register.register_page`'s ``regions``)."""
    return [field_region(t, f) for f in t.fields]


def field_ink(image: np.ndarray, t: Template, f: FormField) -> FieldInk:
    """Binarized, wall-free ink of field ``f`` of a registered page (template px)."""
    x0, y0, x1, y1 = field_region(t, f)
    gray = image[y0 : min(y1, image.shape[0]), x0 : min(x1, image.shape[1])]
    boxes = [
        (round(t.px(bx)) - x0, round(t.px(by)) - y0, round(t.px(bw)), round(t.px(bh)))
        for bx, by, bw, bh in f.boxes_mm()
    ]
    # Paper level: a grey closing wider than any stroke erases ink (and walls), leaving
    # the background with its uneven lighting; ink = how much darker than that a pixel is.
    k = max(9, int(t.px(2.6)) | 1)
    bg = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    bg = cv2.blur(bg, (k, k))
    # (uint8 subtraction saturates at 0: the clipped difference, exactly)
    ink = cv2.GaussianBlur(cv2.subtract(bg, gray).astype(np.float32), (3, 3), 0.6)
    geo = field_geometry(gray.shape, tuple(boxes), f.kind)
    # Threshold relative to the field's own strongest ink away from the walls: faint pens
    # get a low threshold, dark ones a higher one that noise cannot reach.
    inside_vals = ink[geo.inner]
    peak = percentile(inside_vals, 99.7) if inside_vals.size else 0.0
    # Hysteresis: strokes must reach the high level somewhere, and then keep their faint
    # thin parts down to the low level (thin pens lose contrast when scanned small).
    low = max(MIN_INK, min(60.0, 0.15 * peak))
    high = max(MIN_INK + 15.0, min(100.0, 0.4 * peak))
    wall = wall_model(ink, geo)
    raw = ink
    # Ink over a printed wall is laid over the wall's grey, not the paper: its excess over
    # the wall is only (peak - wall) / peak of its full contrast. Scaling it back gives
    # strokes the same level on and off the walls (and undoes the model's one-pixel slack).
    full = max(peak, 2.0 * MIN_INK)
    gain = np.maximum(full - wall, 0.35 * full)
    np.divide(full, gain, out=gain)
    excess = raw - wall
    ink = np.multiply(excess, gain, out=gain)  # (in place: fresh temporaries cost more)
    np.clip(ink, 0.0, 255.0, out=ink)
    # Binarize the unscaled excess: the scaling would lift a stroke's soft edge (blurred
    # into the wall) above the threshold and widen strokes where they cross walls.
    binary = (excess > low).astype(np.uint8)
    walls = ((raw > low) & (wall > 0) & (binary == 0)).astype(np.uint8)
    # Labels without cv2's statistics (five times the cost of the labelling); only the
    # areas are needed here.
    n, labels = cv2.connectedComponents(binary, connectivity=8)
    areas = np.bincount(labels[binary > 0], minlength=n)
    areas[0] = binary.size - areas.sum()
    # A faint but sizeable component is a light stroke too (noise never forms big ones).
    strong = (np.bincount(labels[ink > high], minlength=n) > 0) | (areas >= 4 * MIN_SPECK_PX)
    in_band = np.bincount(labels[geo.bands], minlength=n)
    # Specks are noise; components lying (almost) wholly in a wall band are wall residue.
    keep = strong & (areas >= MIN_SPECK_PX) & (in_band < 0.85 * areas)
    keep[0] = False
    # A weak piece close to a kept stroke is a stroke's faint part (the thin loop of a
    # 9 broken off its stem), not noise: noise is rare next to the strokes. Not in string
    # fields, where such a piece may as well be a neighbour's and would merge digits.
    boxed = f.kind != "string"
    if boxed and keep.any() and boxes:
        weak = ~keep & (areas >= MIN_SPECK_PX // 2) & (in_band < 0.5 * areas)
        weak[0] = False
        # Almost no field has such a piece (1 in 200 on the bench pages): the distance
        # transform, a tenth of this function's time, runs only when one is there.
        if weak.any():
            reach = max(4, round(0.12 * min(b[3] for b in boxes)))
            dist = cv2.distanceTransform((~keep[labels]).view(np.uint8), cv2.DIST_L2, 3)
            keep |= weak & (np.bincount(labels[dist <= reach], minlength=n) > 0)
    binary = keep[labels].astype(np.uint8)
    if boxed:
        binary = _grow_faint(binary, ink, low, geo.paper)
    # 16-bit labels make cv2's statistics pass 2.5x cheaper. 8-connected components are
    # a pixel apart at least, so a region holds at most ceil(h/2) * ceil(w/2) of them.
    h, w = binary.shape
    ltype = cv2.CV_16U if ((h + 1) // 2) * ((w + 1) // 2) < 65535 else cv2.CV_32S
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=ltype)
    return FieldInk((x0, y0), ink, binary, labels, stats, walls, boxes)


def _grow_faint(binary: np.ndarray, ink: np.ndarray, low: float, paper: np.ndarray
                ) -> np.ndarray:
    """Add faint stroke parts (a thin loop of a 9, the pale top of a 0) next to strokes.

    Thin pens lose contrast when scanned small, so part of a stroke can fall below the
    field's threshold. Pieces above a third of the threshold, apart from the soft edge
    of the kept strokes (which would only thicken them) but within a few pixels of them,
    are stroke too. Wall bands are excluded: residue there is no stroke.
    """
    if not binary.any():
        return binary
    edge = cv2.dilate(binary, np.ones((5, 5), np.uint8))
    faint = ((ink > max(0.35 * low, 10.0)) & paper & (edge == 0)).astype(np.uint8)
    n, lab = cv2.connectedComponents(faint, connectivity=8)
    if n <= 1:
        return binary
    near = cv2.dilate(binary, np.ones((11, 11), np.uint8)) > 0
    on = faint > 0
    touch = np.bincount(lab[near & on], minlength=n) > 0
    touch &= np.bincount(lab[on], minlength=n) >= MIN_SPECK_PX // 2
    touch[0] = False
    return (binary | touch[lab]).astype(np.uint8)


def piece_ink(fi: FieldInk, mask: np.ndarray, window: tuple[int, int, int, int] | None = None
              ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Ink of the pixels near ``mask`` (0/1 uint8, region coords) cropped to its box, and
    that box. ``window`` (x0, y0, x1, y1), when given, holds every set pixel of ``mask``: its box is
    looked for there only."""
    wx, wy = (window[0], window[1]) if window else (0, 0)
    sub = mask[wy : window[3], wx : window[2]] if window else mask
    bx, by, bw, bh = cv2.boundingRect(sub)  # of the non-zero pixels; C speed
    bx, by = bx + wx, by + wy
    y0, y1, x0, x1 = by, by + bh, bx, bx + bw
    y0, x0 = max(0, y0 - 1), max(0, x0 - 1)
    y1, x1 = min(mask.shape[0], y1 + 1), min(mask.shape[1], x1 + 1)
    sub = mask[y0:y1, x0:x1]
    # One pixel of dilation keeps the soft stroke edges below the threshold, like MNIST;
    # not onto the printed walls (0/1 masks: near and not a wall = dilated > wall).
    near = cv2.dilate(sub, _KERNEL3) > fi.walls[y0:y1, x0:x1]
    # The ink where it is set, rounded half to even and saturated to uint8 in one OpenCV
    # pass (np.rint, np.clip and astype took three more; many small arrays per page).
    out = cv2.multiply(fi.ink[y0:y1, x0:x1], near.view(np.uint8), dtype=cv2.CV_8U)
    ox, oy = fi.origin
    return out, (int(x0 + ox), int(y0 + oy), int(x1 - x0), int(y1 - y0))


def field_pieces(image: np.ndarray, t: Template, f: FormField) -> list[Piece]:
    """The digit pieces of one field (the ink each crop is normalized from)."""
    return _pieces(field_ink(image, t, f), t, f)


def _pieces(fi: FieldInk, t: Template, f: FormField) -> list[Piece]:
    if f.kind == "string":
        from pipeline.segment_string import string_pieces

        return string_pieces(fi, f, t)
    from pipeline.segment_boxes import box_pieces

    return box_pieces(fi, f)


LINE_MARGIN_MM = 1.0  # ink just outside a string box is still the writer's


def reads_whole(f: FormField) -> bool:
    """Whether the string reader can read field ``f`` whole: a string field whose rectangle
    (plus margins) fits its input without being squeezed (at most LINE_WIDTH / LINE_HEIGHT
    times as wide as high). It was trained on the shipped fields (~4.8); a much longer
    field would reach it squeezed, and its readings would be noise."""
    if f.kind != "string":
        return False
    _, _, w, h = f.boxes_mm()[0]
    return (w + 2 * LINE_MARGIN_MM) <= (h + 2 * LINE_MARGIN_MM) * LINE_WIDTH / LINE_HEIGHT


def string_line(fi: FieldInk) -> np.ndarray:
    """The string reader's input for a string field: its kept strokes (ink levels) in the
    field's rectangle plus :data:`LINE_MARGIN_MM`, through
    :func:`pipeline.normalize.normalize_line`."""
    bx, by, bw, bh = fi.boxes[0]
    m = round(Template.px(LINE_MARGIN_MM))
    y0, y1 = max(0, by - m), min(fi.ink.shape[0], by + bh + m)
    x0, x1 = max(0, bx - m), min(fi.ink.shape[1], bx + bw + m)
    ink = np.where(fi.binary[y0:y1, x0:x1] > 0, fi.ink[y0:y1, x0:x1], 0.0)
    return normalize_line(ink)


def reads_boxes_whole(f: FormField) -> bool:
    """Whether the boxed-field reader can read field ``f`` whole: a boxes, comb or date
    field of at least three boxes whose row (plus margins) fits its 8:1 input unsqueezed.
    (One or two boxes: the digit model sees all there is.)"""
    if f.kind == "string" or f.count < 3:
        return False
    rects = f.boxes_mm()
    w = max(r[0] + r[2] for r in rects) - min(r[0] for r in rects)
    h = max(r[1] + r[3] for r in rects) - min(r[1] for r in rects)
    return (w + 2 * LINE_MARGIN_MM) <= (h + 2 * LINE_MARGIN_MM) * BOX_LINE_WIDTH / LINE_HEIGHT


def box_line(fi: FieldInk) -> np.ndarray:
    """The boxed-field reader's input: the kept strokes (walls removed) over the field's
    row of boxes plus :data:`LINE_MARGIN_MM`, through :func:`pipeline.normalize.
    normalize_line` at width :data:`BOX_LINE_WIDTH`."""
    m = round(Template.px(LINE_MARGIN_MM))
    x0 = max(0, min(b[0] for b in fi.boxes) - m)
    y0 = max(0, min(b[1] for b in fi.boxes) - m)
    x1 = min(fi.ink.shape[1], max(b[0] + b[2] for b in fi.boxes) + m)
    y1 = min(fi.ink.shape[0], max(b[1] + b[3] for b in fi.boxes) + m)
    ink = np.where(fi.binary[y0:y1, x0:x1] > 0, fi.ink[y0:y1, x0:x1], 0.0)
    return normalize_line(ink, width=BOX_LINE_WIDTH)


def segment_page(reg: RegisteredPage, template: Template) -> list[FieldCrop]:
    """Cut every field of a registered page into normalized digit crops.

    boxes/comb/date: one crop per box, empty ones with ``empty=True`` and zero pixels;
    string: candidate crops with group/split hypotheses (see :class:`FieldCrop`), each
    also drawn at field scale (``piece``) for the piece verifier
    (:func:`pipeline.pieces.score_pieces`).
    """
    return segment_fields(reg, template)[0]


def segment_fields(reg: RegisteredPage, template: Template
                   ) -> tuple[list[FieldCrop], list[FieldLine]]:
    """:func:`segment_page`'s crops, plus every written string field whole for the string
    reader (:func:`string_line`) and every written row of three or more boxes whole for the
    boxed-field reader (:func:`box_line`), drawn from the same binarized ink."""
    crops: list[FieldCrop] = []
    lines: list[FieldLine] = []
    zeros = np.zeros((INPUT_SIZE, INPUT_SIZE), np.uint8)
    for f in template.fields:
        fi = field_ink(reg.image, template, f)
        pieces = _pieces(fi, template, f)
        if any(not p.empty for p in pieces):  # (an empty field: nothing to read)
            if reads_whole(f):
                lines.append(FieldLine(f.name, string_line(fi)))
            elif reads_boxes_whole(f):
                lines.append(FieldLine(f.name, box_line(fi), reader="boxes"))
        fh = string_field_height(f) if f.kind == "string" and len(pieces) > 1 else 0.0
        # Cut variants of digits touching across a box wall are verified too (group >= 1).
        box_fh = box_piece_height(f) if f.kind != "string" else 0.0
        for p in pieces:
            scale = fh or (box_fh if p.group >= 1 else 0.0)
            crops.append(
                FieldCrop(
                    key=reg.key,
                    template_id=template.id,
                    field=f.name,
                    kind=f.kind,
                    position=p.position,
                    bbox=p.bbox,
                    pixels=zeros.copy() if p.empty else normalize_digit(p.ink),
                    empty=p.empty,
                    flags=p.flags,
                    group=p.group,
                    split=p.split,
                    piece=normalize_piece(p.ink, scale) if scale and not p.empty else None,
                )
            )
    return crops, lines
