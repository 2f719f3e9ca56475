"""The boxed-field reader: the string reader's CRNN + CTC, trained on whole rows of boxes.

Boxes, comb and date fields are read one box at a time by the digit model; a field goes
to review when the product of its digits' confidences falls below the threshold, or when
a digit crossed a box wall and the cut between boxes is unsure (``ambiguous_cut``).
``boxnet`` reads the same row of boxes *whole*, walls removed, without the per-box cuts
and with each digit's neighbours in view, like ``stringnet`` reads string fields
(:mod:`models.strings`). :mod:`pipeline.lines` uses it as a second, independent reading
of doubtful boxed fields.

Training data are random digit strings of MNIST **training** digits written into the
shipped templates' boxed fields exactly as the synthesizer writes them
(:func:`pipeline.handwriting.write_boxes`), scanned lightly and cleaned by the production
code (``field_ink`` → :func:`pipeline.segment.box_line`). Values are random digits, not
dates or phone numbers: the reader learns what is written, not what is likely, so its
reading stays independent of the validation rules.

    python -m models.boxlines --out models/boxnet.safetensors \\
        [--strings 30000] [--epochs 6] [--seed 31]
"""

from __future__ import annotations

import numpy as np
from torch import nn

from models.contract import Contract
from models.pieces import StringFieldBlank, field_blanks, run_recipe, scan_region
from models.strings import train_lines, write_lines
from models.weights import BOXES_WEIGHTS
from pipeline.handwriting import FILL_DPI, DigitBank, boxes_for, sample_pen, write_boxes
from pipeline.normalize import BOX_LINE_WIDTH
from pipeline.segment import box_line, field_ink, reads_boxes_whole
from pipeline.templates import WORK_DPI

VERSION = "boxnet-1.0"
FULL_SHARE = 0.8  # most boxed fields are filled to their length; the rest partly
BOX_INK = ("row of boxes, walls removed, white-on-black, height 32, left-aligned in width "
           f"{BOX_LINE_WIDTH} (box_line)")


def box_field_blanks() -> list[StringFieldBlank]:
    """Every boxed field of the shipped templates the reader reads (``reads_boxes_whole``)."""
    return [fd for fd in field_blanks(("boxes", "comb", "date")) if reads_boxes_whole(fd.field)]


def sample_box_line(fd: StringFieldBlank, bank: DigitBank, rng: np.random.Generator
                    ) -> tuple[np.ndarray, str]:
    """Write random digits into a blank boxed field and return the reader's input for it,
    as the pipeline would draw it, with its value."""
    f = fd.field
    s = round(FILL_DPI / WORK_DPI)
    n = f.count if rng.random() < FULL_SHARE else int(rng.integers(1, f.count + 1))
    value = "".join(str(int(d)) for d in rng.integers(0, 10, n))
    pen = sample_pen(rng, color_page=True)
    canvas = fd.region_fill.copy()
    write_boxes(canvas, f, boxes_for(f, value), bank, pen, rng, FILL_DPI,
                origin=(fd.origin[0] * s, fd.origin[1] * s))
    image, _ = scan_region(fd, canvas, rng)
    return box_line(field_ink(image, fd.template, f)), value


def make_box_lines(bank: DigitBank, strings: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``(N, 32, 256)`` uint8 lines and their values from ``strings`` written fields."""
    return write_lines(box_field_blanks(), sample_box_line, bank, strings, seed,
                       BOX_LINE_WIDTH, "boxed fields")


def train_box_lines(x: np.ndarray, y: list[str], *, epochs: int = 6, seed: int = 31
                    ) -> tuple[nn.Module, Contract, dict[str, float]]:
    """Train ``boxnet`` with the string reader's recipe (:func:`models.strings.train_lines`)."""
    return train_lines(x, y, epochs=epochs, seed=seed, arch="boxnet", version=VERSION,
                       ink=BOX_INK)


def main(argv: list[str] | None = None) -> int:
    """Generate boxed fields from MNIST training digits, train, and save the reader."""
    return run_recipe(argv, __doc__ or "", BOXES_WEIGHTS, 30000, 6, 31, make_box_lines,
                      train_box_lines)


if __name__ == "__main__":
    raise SystemExit(main())
