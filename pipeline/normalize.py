"""The digit normalization contract, shared by training and the pipeline.

A crop is turned into the model's input exactly as MNIST was made: white ink on black,
the digit's bounding box scaled (aspect kept) to fit a ``fit_box``×``fit_box`` square,
then placed in an ``input_size``×``input_size`` canvas so that its centre of mass sits at
the canvas centre. Training data from any source (USPS, folders of images, reviewers'
corrections) and every crop cut from a scan go through :func:`normalize_digit`, so the
model sees in training what it sees in production.
"""

from __future__ import annotations

import cv2
import numpy as np

INPUT_SIZE = 28
FIT_BOX = 20
# A pixel counts as ink for the bounding box when it exceeds this fraction of the
# crop's maximum: keeps faint anti-aliasing and scanner noise from inflating the box.
INK_FRACTION = 0.12


def normalize_digit(
    ink: np.ndarray, *, input_size: int = INPUT_SIZE, fit_box: int = FIT_BOX
) -> np.ndarray:
    """Normalize one digit image to the model contract.

    Args:
        ink: 2-D array, ink bright on a dark background (0 = no ink). uint8 or float.
        input_size: side of the output canvas (28 for MNIST-style models).
        fit_box: side of the square the digit's bounding box is scaled into (20).

    Returns:
        ``uint8`` array of shape ``(input_size, input_size)``; all zeros if there is no ink.
    """
    if ink.ndim != 2:
        raise ValueError(f"normalize_digit expects a 2-D image, got shape {ink.shape}")
    img = ink.astype(np.float32, copy=False)
    peak = float(img.max()) if img.size else 0.0
    out = np.zeros((input_size, input_size), np.uint8)
    if peak <= 0.0:
        return out
    img = img * (255.0 / peak) if ink.dtype != np.uint8 or peak < 255 else img
    # Bounding box of the ink pixels (cv2: one C pass instead of nonzero + four reductions).
    x0, y0, bw, bh = cv2.boundingRect((img > INK_FRACTION * 255.0).view(np.uint8))
    if bw == 0:
        return out
    box = img[y0 : y0 + bh, x0 : x0 + bw]
    h, w = box.shape
    scale = fit_box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    small = cv2.resize(box, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else box
    small = np.clip(small, 0.0, 255.0)
    total = float(small.sum())
    if total <= 0.0:
        return out
    # Centre of mass of the scaled digit, then the offset that puts it at the canvas centre.
    cy = float((small.sum(axis=1) * np.arange(nh)).sum()) / total
    cx = float((small.sum(axis=0) * np.arange(nw)).sum()) / total
    top = round((input_size - 1) / 2.0 - cy)
    left = round((input_size - 1) / 2.0 - cx)
    top = min(max(top, 0), input_size - nh)
    left = min(max(left, 0), input_size - nw)
    # (small is clipped to 0..255: OpenCV rounds it half to even to uint8 as np.rint does)
    out[top : top + nh, left : left + nw] = cv2.convertScaleAbs(small)
    return out


def normalize_batch(images: np.ndarray) -> np.ndarray:
    """Apply :func:`normalize_digit` to a stack ``(N, H, W)``; returns ``(N, 28, 28)`` uint8."""
    return np.stack([normalize_digit(im) for im in images]) if len(images) else np.zeros(
        (0, INPUT_SIZE, INPUT_SIZE), np.uint8
    )


# String-field pieces for the piece verifier (``models.pieces``): drawn at the scale of the
# field, not blown up to fit the box, so that half a digit stays narrow and a touching pair
# stays wide: the size of a piece is what tells it from one digit.
PIECE_FIELD_FILL = 0.65  # share of a string field's height that handwriting takes
PIECE_DIGIT_PX = 18  # a digit PIECE_FIELD_FILL × the field's height tall is drawn this tall
PIECE_MAX_PX = 26  # larger pieces (several digits) are shrunk to fit


def normalize_piece(ink: np.ndarray, field_h: float, *, input_size: int = INPUT_SIZE
                    ) -> np.ndarray:
    """A string-field piece at field scale, centred in an ``input_size`` square (uint8).

    ``ink`` is bright on black (as :func:`normalize_digit`), ``field_h`` the height of the
    field's rectangle in the same pixels. The training data of the piece verifier and the
    pipeline both call this, so they cannot drift apart.
    """
    out = np.zeros((input_size, input_size), np.uint8)
    img = ink.astype(np.float32, copy=False)
    peak = float(img.max()) if img.size else 0.0
    if peak <= 0.0:
        return out
    x0, y0, bw, bh = cv2.boundingRect((img > INK_FRACTION * peak).view(np.uint8))
    box = img[y0 : y0 + bh, x0 : x0 + bw] * (255.0 / peak)
    h, w = box.shape
    scale = min(PIECE_DIGIT_PX / max(PIECE_FIELD_FILL * field_h, 1.0), PIECE_MAX_PX / max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    small = np.clip(cv2.resize(box, (nw, nh), interpolation=interp), 0.0, 255.0)
    top, left = (input_size - nh) // 2, (input_size - nw) // 2
    out[top : top + nh, left : left + nw] = np.rint(small).astype(np.uint8)
    return out


LINE_HEIGHT = 32  # the string reader's input height (models/stringnet)
LINE_WIDTH = 160  # ... and width: a 70 x 15 mm string box at that height, with room
BOX_LINE_WIDTH = 256  # the boxed-field reader's width (models/boxnet): 8:1, the longest
# shipped row of boxes (account number, 83.5 x 9 mm plus margins) unsqueezed


def normalize_line(ink: np.ndarray, *, height: int = LINE_HEIGHT, width: int = LINE_WIDTH
                   ) -> np.ndarray:
    """A whole string field for the string reader: ``(height, width)`` uint8, left-aligned.

    ``ink`` is the field's wall-free ink, bright on black (0 = paper), cut to the field's
    rectangle. It is scaled to ``height`` rows (aspect kept, at most ``width`` columns) and
    padded with black on the right. The string reader's training data
    (``models.strings``) and the pipeline both call this, so they cannot drift apart.
    """
    out = np.zeros((height, width), np.uint8)
    if ink.size == 0:
        return out
    h, w = ink.shape
    nw = min(width, max(1, round(w * height / max(h, 1))))
    small = cv2.resize(np.clip(ink, 0, 255).astype(np.float32), (nw, height),
                       interpolation=cv2.INTER_AREA)
    out[:, :nw] = np.rint(np.clip(small, 0.0, 255.0)).astype(np.uint8)
    return out
