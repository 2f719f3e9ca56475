"""The benchmark's picture: pages/s and RSS over the long memory run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(res: dict[str, Any], path: Path, window_s: float = 5.0) -> None:
    """Write ``path`` (PNG): throughput (rolling ``window_s``) and RSS against time."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on the bench machine
    import matplotlib.pyplot as plt

    s = res["rss_samples"]
    t = [x[0] for x in s]
    rate = []
    j = 0
    for i, ti in enumerate(t):
        while t[j] < ti - window_s:
            j += 1
        dt = ti - t[j]
        rate.append((s[i][4] - s[j][4]) / dt if dt > 0 else 0.0)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    a1.plot(t, rate, color="tab:blue")
    a1.set_ylabel(f"pages/s ({window_s:.0f} s window)")
    a1.set_title(f"formdigits run, 2 workers, {res['memory_pages']} pages "
                 f"({res.get('measured_utc', '')} UTC)")
    a1.grid(alpha=0.3)
    a2.plot(t, [x[1] for x in s], label="total RSS (main + workers)", color="tab:red")
    a2.plot(t, [x[3] for x in s], label="total PSS (shared pages counted once)",
            color="tab:green")
    a2.plot(t, [x[2] for x in s], label="main process RSS", color="tab:orange")
    a2.set_ylabel("RSS (MB)")
    a2.set_xlabel("seconds")
    a2.set_ylim(bottom=0)
    a2.grid(alpha=0.3)
    a2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
