"""Registration: align a scanned page to its form template.

The page (any dpi, rotated, maybe upside down or landscape, scaled, with mild perspective)
is mapped onto *template pixels* (the page rendered at ``WORK_DPI``):

1. the four filled corner marks are found on a small copy of the page (adaptive threshold,
   opening, contours that are filled squares of a plausible size, then the four candidates
   that form the best rectangle of the page's aspect);
2. the four pose hypotheses (the page turned by 0/90/180/270 degrees) and every template
   are scored by how well the marks fit the template and by reading the form-id code strip
   through the candidate homography; the code names the template and settles upside down;
3. when the marks cannot be found, ORB features of the page are matched against each
   template's rendered blank (RANSAC homography), and the same code check decides;
4. the detection copy is warped onto the template and its printed structure is compared
   with the blank (normalized cross-correlation) for the final score; then the page is
   warped into template pixels (in the pipeline only the field regions segmentation
   reads, see ``regions``).

Per-template references (rendered blank, code strip, features), the shrinks and warps,
and the scoring and ECC helpers live in :mod:`pipeline.register_code`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.decode import estimate_dpi
from pipeline.errors import RegistrationError
from pipeline.records import Page, RegisteredPage
from pipeline.register_code import (
    DET_DPI,
    Region,
    TemplateRef,
    code_match,
    code_score,
    orientation_of,
    refine_ecc,
    shrink,
    shrink_matrix,
    similarity_rms,
    struct_warp,
    structure_ncc,
    template_ref,
    warp_to_template,
)
from pipeline.templates import MM_PER_INCH, WORK_DPI, Template

# Marks are looked for among this many best square-like blobs (C(10, 4) = 210 quads).
MAX_MARK_CANDIDATES = 10
# Weights of the registration score; the code strip is decisive, so a page whose code does
# not read as a known template can never reach the default min_score of 0.5.
W_GEOM, W_CODE, W_STRUCT = 0.3, 0.4, 0.3
MIN_FEATURE_INLIERS = 20


@dataclass(frozen=True)
class _Pose:
    """One candidate pose: template px -> base px homography and its scores."""

    ref: TemplateRef
    h_base: np.ndarray
    geom: float
    code: float
    code_ok: bool
    method: str


MIN_PAGE_SIDE_PX = 64  # below this, no registration mark or code cell is even 1 px


def _estimate_dpi(page: Page, templates: Sequence[Template]) -> float:
    """Source dpi of ``page`` (see :func:`pipeline.decode.estimate_dpi`)."""
    return estimate_dpi(max(page.image.shape[:2]), page.dpi, longest_side_mm(templates))


def longest_side_mm(templates: Sequence[Template]) -> float:
    """The longest page side among ``templates`` (mm): what a page's pixel size is read as."""
    return max(max(t.width_mm, t.height_mm) for t in templates)


def _mark_candidates(det: np.ndarray, mark_px: Sequence[float]) -> list[tuple[float, float]]:
    """Centres (det px) of filled square blobs of a plausible mark size, best first."""
    m_lo, m_hi = min(mark_px), max(mark_px)
    block = int(m_hi * 3) | 1
    binary = cv2.adaptiveThreshold(
        det, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, max(block, 15), 30
    )
    # Opening with a kernel about half a mark wide erases text, box lines and handwriting
    # strokes, and cuts marks loose from lines that touch them; filled squares survive.
    k = max(3, int(m_lo * 0.45))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    opened = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    contours, _ = cv2.findContours(opened, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    scored: list[tuple[float, float, float]] = []
    for c in contours:
        area = cv2.contourArea(c)
        if not (0.4 * m_lo * m_lo <= area <= 2.1 * m_hi * m_hi):
            continue
        (_cx, _cy), (w, h), _ = cv2.minAreaRect(c)
        if min(w, h) < 2:
            continue
        aspect = max(w, h) / min(w, h)
        fill = area / (w * h)
        if aspect > 1.4 or fill < 0.75:
            continue
        mom = cv2.moments(c)
        if mom["m00"] <= 0:
            continue
        size_err = min(abs(math.log(math.sqrt(area) / m)) for m in mark_px)
        q = (aspect - 1.0) + (1.0 - fill) + 0.5 * size_err
        scored.append((q, mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]))
    scored.sort()
    return [(x, y) for _, x, y in scored[:MAX_MARK_CANDIDATES]]


def _order_clockwise(pts: np.ndarray) -> np.ndarray:
    """Order 4 points clockwise (image y down), starting with the one nearest top-left."""
    c = pts.mean(axis=0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    p = pts[np.argsort(ang)]
    start = int(np.argmin(p[:, 0] + p[:, 1]))
    return np.roll(p, -start, axis=0)


def _best_quad(
    cands: list[tuple[float, float]], aspects: Sequence[float], span_px: Sequence[float]
) -> np.ndarray | None:
    """The 4 candidates that best form a rectangle of a template's mark aspect and size."""
    if len(cands) < 4:
        return None
    pts_all = np.array(cands, np.float64)
    best: tuple[float, np.ndarray] | None = None
    for combo in itertools.combinations(range(len(cands)), 4):
        p = _order_clockwise(pts_all[list(combo)])
        s = [float(np.linalg.norm(p[(i + 1) % 4] - p[i])) for i in range(4)]
        d1, d2 = float(np.linalg.norm(p[2] - p[0])), float(np.linalg.norm(p[3] - p[1]))
        if min(s) < 1:
            continue
        rect_err = (
            abs(s[0] - s[2]) / (s[0] + s[2])
            + abs(s[1] - s[3]) / (s[1] + s[3])
            + abs(d1 - d2) / (d1 + d2)
        )
        r = (s[0] + s[2]) / (s[1] + s[3])
        asp_err = min(min(abs(math.log(r / q)), abs(math.log(r * q))) for q in aspects)
        long_side = max(s[0] + s[2], s[1] + s[3]) / 2
        size_err = min(abs(math.log(long_side / sp)) for sp in span_px)
        err = rect_err + asp_err + 0.3 * max(0.0, size_err - 0.15)
        if rect_err > 0.12 or asp_err > 0.1 or size_err > 0.4:
            continue
        if best is None or err < best[0]:
            best = (err, p)
    return None if best is None else best[1]


def _best_triple(
    cands: list[tuple[float, float]], aspects: Sequence[float], span_px: Sequence[float]
) -> np.ndarray | None:
    """Three marks at a right angle (one mark lost off the page edge or under a stain);
    the fourth corner completes the parallelogram."""
    if len(cands) < 3:
        return None
    pts_all = np.array(cands, np.float64)
    best: tuple[float, np.ndarray] | None = None
    for i, j, k in itertools.permutations(range(len(cands)), 3):
        if i > k:
            continue  # (a, b, c) and (c, b, a) are the same corner
        a, b, c = pts_all[i], pts_all[j], pts_all[k]
        u, v = a - b, c - b
        lu, lv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
        if min(lu, lv) < 1:
            continue
        cos = abs(float(u @ v)) / (lu * lv)
        r = lu / lv
        asp_err = min(min(abs(math.log(r / q)), abs(math.log(r * q))) for q in aspects)
        size_err = min(abs(math.log(max(lu, lv) / sp)) for sp in span_px)
        if cos > 0.06 or asp_err > 0.06 or size_err > 0.4:
            continue
        err = cos + asp_err + 0.3 * size_err
        if best is None or err < best[0]:
            best = (err, _order_clockwise(np.stack([a, b, c, a + c - b])))
    return None if best is None else best[1]


def _refine_centre(base: np.ndarray, x: float, y: float, mark_px: float) -> tuple[float, float]:
    """Sub-pixel mark centre on the base image: Otsu inside a window, centroid of the blob."""
    r = int(mark_px * 1.0) + 2
    h, w = base.shape
    x0, y0 = max(0, int(x) - r), max(0, int(y) - r)
    x1, y1 = min(w, int(x) + r + 1), min(h, int(y) + r + 1)
    win = base[y0:y1, x0:x1]
    if win.size == 0:
        return x, y
    _, bw = cv2.threshold(win, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    # (16-bit labels where they fit: cv2's statistics pass is several times cheaper)
    ltype = cv2.CV_16U if win.size < 65535 else cv2.CV_32S
    n, labels, stats, cents = cv2.connectedComponentsWithStats(bw, connectivity=8, ltype=ltype)
    if n <= 1:
        return x, y
    # The component containing (or nearest to) the coarse centre is the mark.
    cx, cy = x - x0, y - y0
    best, best_d = -1, 1e18
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < 0.3 * mark_px * mark_px:
            continue
        d = (cents[i, 0] - cx) ** 2 + (cents[i, 1] - cy) ** 2
        if d < best_d:
            best, best_d = i, d
    if best < 0 or best_d > (0.5 * mark_px) ** 2:
        return x, y
    # Intensity-weighted centroid over the blob is less biased by the threshold than a
    # plain mask centroid.
    mask = labels == best
    wgt = (255.0 - win.astype(np.float32)) * mask
    tot = float(wgt.sum())
    if tot <= 0:
        return x, y
    # Coordinates broadcast, not laid out as two full grids: the same products, summed in
    # the same order.
    xs, ys = np.arange(win.shape[1])[None, :], np.arange(win.shape[0])[:, None]
    return x0 + float((wgt * xs).sum()) / tot, y0 + float((wgt * ys).sum()) / tot


def _poses_from_marks(
    base: np.ndarray,
    det: np.ndarray,
    det_to_base: float,
    refs: Sequence[TemplateRef],
    base_dpi: float,
) -> list[_Pose]:
    """Candidate poses from the four corner marks (empty list when none are found)."""
    mark_px = sorted({r.template.marks.size_mm * DET_DPI / MM_PER_INCH for r in refs})
    cands = _mark_candidates(det, [m * f for m in mark_px for f in (0.95, 1.05)])
    aspects = []
    spans = []
    for r in refs:
        mk = np.array(r.template.mark_centers_mm())
        wmm, hmm = mk[1, 0] - mk[0, 0], mk[3, 1] - mk[0, 1]
        aspects.append(wmm / hmm)
        spans.append(max(wmm, hmm) * DET_DPI / MM_PER_INCH)
    quad = _best_quad(cands, aspects, spans)
    n_found = 4
    if quad is None:
        quad, n_found = _best_triple(cands, aspects, spans), 3
    if quad is None:
        return []
    m_base = max(mark_px) * det_to_base
    off = 0.5 * det_to_base - 0.5
    pts = np.array(
        [_refine_centre(base, x * det_to_base + off, y * det_to_base + off, m_base)
         for x, y in quad],
        np.float64,
    )
    poses: list[_Pose] = []
    # Forms printed from one layout share their marks and code strip cells: the pose of
    # each rotation, its fit, and the bits read through it are the same for all of them,
    # so they are computed once per layout (only the expected bits differ).
    fits: dict[tuple[bytes, int], tuple[np.ndarray, float]] = {}
    reads: dict[tuple[bytes, int, object], np.ndarray | None] = {}
    for ref in refs:
        layout = ref.marks_px.tobytes()
        for k in range(4):
            if (layout, k) not in fits:
                dst = np.roll(pts, -k, axis=0)
                fits[layout, k] = (cv2.getPerspectiveTransform(ref.marks_px.astype(np.float32),
                                                               dst.astype(np.float32)),
                                   similarity_rms(ref.marks_px, dst))
            h, rms = fits[layout, k]
            diag = float(np.hypot(*ref.size_px)) * base_dpi / WORK_DPI
            geom = max(0.0, 1.0 - rms / (0.03 * diag)) * (1.0 if n_found == 4 else 0.9)
            if geom <= 0.0:
                continue
            strip = (layout, k, ref.strip_key)
            if strip not in reads:
                reads[strip] = ref.read_code(base, h)
            code, ok = code_score(reads[strip], ref)
            if ok and n_found == 3:
                # Three marks fix only an affine pose; ECC recovers the perspective.
                h = refine_ecc(base, h, ref, base_dpi)
            poses.append(_Pose(ref, h, geom, code, ok, "marks"))
    return poses


def _snap_to_marks(
    base: np.ndarray, h: np.ndarray, ref: TemplateRef, base_dpi: float
) -> np.ndarray:
    """Re-estimate a feature-based pose from the marks it predicts, where they are visible."""
    m_px = ref.template.marks.size_mm * base_dpi / MM_PER_INCH
    pred = cv2.perspectiveTransform(ref.marks_px[None], h)[0]
    src, dst = [], []
    for (x, y), tp in zip(pred, ref.marks_px, strict=True):
        rx, ry = _refine_centre(base, float(x), float(y), m_px)
        if (rx, ry) != (float(x), float(y)) and math.hypot(rx - x, ry - y) < 0.5 * m_px:
            src.append(tp)
            dst.append((rx, ry))
    if len(src) == 4:
        return cv2.getPerspectiveTransform(np.array(src, np.float32), np.array(dst, np.float32))
    if len(src) == 3:
        a = cv2.getAffineTransform(np.array(src, np.float32), np.array(dst, np.float32))
        return np.vstack([a, [0.0, 0.0, 1.0]])
    return h


def _poses_from_features(
    base: np.ndarray, base_dpi: float, refs: Sequence[TemplateRef]
) -> list[_Pose]:
    """Candidate poses from ORB feature matching against each template's blank."""
    f = DET_DPI / base_dpi
    small = shrink(base, f) if f < 1 else base
    s_small = shrink_matrix(base.shape, small.shape)
    orb = cv2.ORB.create(nfeatures=3000, scaleFactor=1.2, nlevels=8, fastThreshold=15)
    kp, des = orb.detectAndCompute(small, None)
    if des is None or len(kp) < MIN_FEATURE_INLIERS:
        return []
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    poses: list[_Pose] = []
    for ref in refs:
        tkp, tdes, t_scale = ref.features()
        if tdes is None or len(tkp) < MIN_FEATURE_INLIERS:
            continue
        pairs = matcher.knnMatch(tdes, des, k=2)
        good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
        if len(good) < MIN_FEATURE_INLIERS:
            continue
        src = np.array([tkp[m.queryIdx].pt for m in good], np.float32)
        dst = np.array([kp[m.trainIdx].pt for m in good], np.float32)
        h_small, inl = cv2.findHomography(src, dst, cv2.RANSAC, 3.0, maxIters=3000)
        if h_small is None or inl is None or int(inl.sum()) < MIN_FEATURE_INLIERS:
            continue
        # template px (WORK_DPI) -> feature px -> small page px -> base px
        h = np.linalg.inv(s_small) @ h_small @ t_scale
        h = refine_ecc(base, h / h[2, 2], ref, base_dpi)
        h = _snap_to_marks(base, h, ref, base_dpi)
        geom = min(1.0, float(inl.sum()) / 120.0)
        code, ok = code_match(base, h, ref)
        poses.append(_Pose(ref, h, geom, code, ok, "features"))
    return poses


def _score(p: _Pose, ncc: float) -> float:
    """Registration score in [0, 1]; an unreadable code caps it below 0.5."""
    struct = min(1.0, max(0.0, ncc / 0.5))
    s = W_GEOM * p.geom + W_CODE * p.code * (1.0 if p.code_ok else 0.0) + W_STRUCT * struct
    return float(min(1.0, max(0.0, s if p.code_ok else min(s, 0.45))))


def register_page(
    page: Page, templates: Sequence[Template], min_score: float = 0.5,
    regions: Callable[[Template], Sequence[Region]] | None = None,
) -> RegisteredPage:
    """Align ``page`` to the best matching template.

    Args:
        page: gray uint8 page, dark ink on light paper.
        templates: the candidate form templates.
        min_score: pages scoring lower raise :class:`RegistrationError`.
        regions: if given, only these ``(x0, y0, x1, y1)`` template-px rectangles of the
            matched template are warped (the rest of the image is paper white): the parts
            segmentation reads (:func:`pipeline.segment.read_regions`), at a fraction of
            the full warp's cost. Their pixels are the full warp's.

    Returns:
        The page warped into template pixels, with the template px -> source px homography.

    Raises:
        RegistrationError: no template matches well enough (unknown layout, blank page).
    """
    if not templates:
        raise RegistrationError("no form templates configured")
    img = page.image
    if img.ndim != 2 or img.dtype != np.uint8:
        raise RegistrationError(f"page image must be 2-D uint8, got {img.dtype} {img.shape}")
    if min(img.shape) < MIN_PAGE_SIDE_PX:
        # Found by fuzzing: OpenCV's ORB pyramid asserts on tiny images. Nothing this small
        # can hold a form, so say so instead of failing with an internal error.
        raise RegistrationError(f"page is only {img.shape[1]}x{img.shape[0]} px: too small "
                                "to be a scanned form")
    refs = [template_ref(t) for t in templates]
    src_dpi = _estimate_dpi(page, templates)
    # Work on a copy near WORK_DPI: big scans are shrunk once with area averaging, so the
    # later warp neither aliases nor touches more pixels than it needs.
    f = WORK_DPI / src_dpi
    base = img if f > 0.8 else shrink(img, f)
    s_base = shrink_matrix(img.shape, base.shape)
    base_dpi = src_dpi * base.shape[1] / img.shape[1]
    fd = DET_DPI / base_dpi
    det = base if fd > 0.9 else shrink(base, fd)
    det_to_base = 1.0 / float(shrink_matrix(base.shape, det.shape)[0, 0])  # exact scale

    poses = _poses_from_marks(base, det, det_to_base, refs, base_dpi)
    if not any(p.code_ok for p in poses):
        poses += _poses_from_features(base, base_dpi, refs)
    if not poses:
        names = ", ".join(t.id for t in templates)
        raise RegistrationError(
            "page does not match any known form (no registration marks or matching "
            f"features found; templates tried: {names})"
        )
    poses.sort(key=lambda p: (p.code_ok, W_GEOM * p.geom + W_CODE * p.code), reverse=True)
    best_pose, best_score = poses[0], -1.0
    for p in poses[:2]:
        sc = _score(p, structure_ncc(struct_warp(det, base.shape, p.h_base, p.ref.size_px), p.ref))
        if sc > best_score:
            best_pose, best_score = p, sc
        if p.code_ok:
            break
    if best_score < min_score:
        raise RegistrationError(
            f"page does not match any known form (best: {best_pose.ref.template.id}, "
            f"score {max(best_score, 0.0):.2f})"
        )
    h_src = np.linalg.inv(s_base) @ best_pose.h_base
    h_src /= h_src[2, 2]
    return RegisteredPage(
        key=page.key,
        template_id=best_pose.ref.template.id,
        image=warp_to_template(base, best_pose.h_base, best_pose.ref.size_px,
                               regions(best_pose.ref.template) if regions else None),
        homography=tuple(float(v) for v in h_src.ravel()),
        score=round(best_score, 4),
        orientation=orientation_of(h_src),
        method=best_pose.method,
    )
