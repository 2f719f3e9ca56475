"""Memory part of the performance benchmark: RSS and PSS over a long 2-worker run.

The run happens in a freshly spawned process, like ``formdigits run`` (the bench's own
arrays do not count), sampled by a psutil thread (the process and its page workers).
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.perf import BenchConfig, load_psutil, run_pipeline, run_reader
from bench.perf_pages import copy_pages


class RssSampler(threading.Thread):
    """Samples RSS and PSS of process ``pid`` and its children every ``dt`` seconds.

    RSS summed over the tree counts pages the forked workers share with the main process
    once per process (an over-estimate); PSS splits shared pages fairly (the true total).
    """

    def __init__(self, pid: int, pages: Any, dt: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.pages, self.dt = pid, pages, dt
        # t, RSS total MB, RSS main MB, PSS total MB, pages done
        self.samples: list[tuple[float, float, float, float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop` (or until the process is gone)."""
        ps = load_psutil()
        t0 = time.perf_counter()
        try:
            root = ps.Process(self.pid)
        except ps.Error:
            return
        while not self._halt.is_set():
            rss = pss = main = 0.0
            try:
                procs = [root, *root.children(recursive=True)]
            except ps.Error:
                break
            for i, p in enumerate(procs):
                try:
                    info = p.memory_full_info()
                except ps.Error:  # a worker that just exited
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                if i == 0:
                    main = info.rss
            self.samples.append((time.perf_counter() - t0, rss / 2**20, main / 2**20,
                                 pss / 2**20, int(self.pages.value)))
            self._halt.wait(self.dt)

    def stop(self) -> None:
        """End sampling and wait for the thread."""
        self._halt.set()
        self.join()


def _memory_child(copies: Path, out: Path, pages: Any, result: Any) -> None:
    # A fresh process like `formdigits run`: the bench's own arrays do not count. Its page
    # workers are forked as in `formdigits run` (pipeline.recognize asks for fork: a
    # spawned process would otherwise spawn them too, each importing torch afresh).
    def progress(done: int, _total: int) -> None:
        pages.value = done

    res = run_pipeline(copies, out, 2, run_reader(), progress)
    result.put({k: v for k, v in res.items() if k != "stage_seconds"})


def memory_run(sources: Sequence[Path], cfg: BenchConfig) -> dict[str, Any]:
    """Process ``cfg.memory_pages`` page copies with 2 workers while sampling memory."""
    copies = cfg.work_dir / "copies"
    shutil.rmtree(copies, ignore_errors=True)
    copy_pages(list(sources), copies, cfg.memory_pages)
    ctx = mp.get_context("spawn")
    pages, result = ctx.Value("i", 0), ctx.Queue()
    child = ctx.Process(target=_memory_child,
                        args=(copies, cfg.work_dir / "out_memory", pages, result))
    child.start()
    sampler = RssSampler(child.pid or 0, pages)
    sampler.start()
    try:
        res = result.get()
        child.join()
        result.close()
    finally:
        sampler.stop()
        if child.is_alive():
            child.terminate()
    shutil.rmtree(copies, ignore_errors=True)
    # Only the samples while pages were flowing (not interpreter start / model load).
    s = [x for x in sampler.samples if 0 < x[4] < res["pages"]] or sampler.samples
    q = max(1, len(s) // 4)

    def growth(col: int) -> float:
        return sum(x[col] for x in s[-q:]) / q - sum(x[col] for x in s[:q]) / q

    return {
        "memory_pages": res["pages"], "memory_errors": res["errors"],
        "memory_pages_per_s": res["pages_per_s"],
        "peak_rss_mb": max(x[1] for x in s), "peak_rss_main_mb": max(x[2] for x in s),
        "peak_pss_mb": max(x[3] for x in s),
        "rss_growth_mb": growth(1), "pss_growth_mb": growth(3),
        "rss_samples": [[round(a, 2), round(b, 1), round(c, 1), round(d, 1), e]
                        for a, b, c, d, e in sampler.samples],
    }
