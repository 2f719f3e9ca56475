"""Inputs of the performance benchmark: synthetic 300-dpi A4 scans and cheap copies.

Pages come from :func:`pipeline.synth.make_page` with MNIST test digits, written the way
office scanners deliver them: colour pages as JPEG, grayscale pages as PNG. The memory run
needs thousands of *distinct* files (the planner skips duplicate content), so a few
distinct pages are copied with a unique trailer after the image data: decoders stop at
the end-of-image marker, so each copy decodes to the same page but hashes differently.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline.errors import DataNotFoundError, DatasetFormatError

SCAN_DPI = 300
SEED = 20261125


def mnist_bank_or_none() -> tuple[object | None, str]:
    """The MNIST test digit bank, or ``None`` and why it is unavailable."""
    from pipeline.synth import load_bank

    try:
        return load_bank("mnist", split="test"), ""
    except (DataNotFoundError, DatasetFormatError, OSError) as exc:
        return None, f"MNIST test digits unavailable ({exc})"


def make_pages(out: Path, n: int, bank: object, seed: int = SEED, start: int = 0,
               step: int = 1) -> list[Path]:
    """Write filled 300-dpi A4 scans ``start, start+step, … < n`` into ``out`` (even pages
    colour JPEG, odd pages gray PNG; page ``i`` is a pure function of ``seed`` and ``i``)."""
    import cv2

    from pipeline.handwriting import FILL_DPI
    from pipeline.render import render_blank
    from pipeline.synth import make_page
    from pipeline.templates import load_templates

    templates = load_templates(())
    blanks = {t.id: render_blank(t, FILL_DPI, color=True) for t in templates}
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(start, n, step):
        t = templates[i % len(templates)]
        rng = np.random.default_rng([seed, i])
        color = i % 2 == 0
        img, _ = make_page(t, blanks[t.id], bank, rng, dpi=SCAN_DPI,  # type: ignore[arg-type]
                           color=color)
        if color:
            path = out / f"scan_{i:05d}.jpg"
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, 85])
        else:
            path = out / f"scan_{i:05d}.png"
            ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise RuntimeError(f"cannot encode {path}")
        path.write_bytes(buf.tobytes())
        paths.append(path)
    return paths


def generate_pages(out: Path, n: int, bank: object, procs: int = 2) -> list[Path]:
    """A fresh ``out`` with pages ``0 … n-1`` of :func:`make_pages`, written by ``procs``
    spawned processes (spawn: OpenCV threads in a forked child can deadlock)."""
    import multiprocessing as mp

    shutil.rmtree(out, ignore_errors=True)
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.starmap(make_pages, [(out, n, bank, SEED, k, procs) for k in range(procs)])
    return sorted(p for part in parts for p in part)


def copy_pages(sources: list[Path], out: Path, count: int) -> list[Path]:
    """``count`` distinct files cycling over ``sources`` (unique trailer per copy)."""
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(count):
        src = sources[i % len(sources)]
        dst = out / f"copy_{i:05d}{src.suffix}"
        shutil.copyfile(src, dst)
        with dst.open("ab") as fh:
            fh.write(f"formdigits-bench-copy-{i}".encode())
        paths.append(dst)
    return paths
