"""Security checks of the reliability bench: data-only YAML, safetensors-only weights.

Each check feeds a hostile file to the real loader and records the outcome as a
:class:`bench.reliability_faults.Row`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from bench.reliability_faults import CLI, Row
from pipeline.errors import ConfigError, ModelError

ROOT = Path(__file__).resolve().parent.parent
# A YAML payload that would run a shell command under an unsafe loader.
EVIL_YAML = "!!python/object/apply:os.system ['touch {marker}']\n"
EVIL_KEY = "batch_size: !!python/object/apply:os.system ['touch {marker}']\n"


def _refused(fn: object, exc: type[Exception]) -> tuple[bool, str]:
    try:
        fn()  # type: ignore[operator]
    except exc as e:
        return True, " ".join(str(e).split())[:120]
    except Exception as e:  # any other outcome is a finding, not a crash
        return False, f"{type(e).__name__}: {e}"[:120]
    return False, "accepted"


def yaml_rows(work: Path) -> list[Row]:
    """Settings and templates with python/object tags are refused; nothing is executed."""
    from pipeline.settings import load_settings
    from pipeline.templates import load_template

    marker = work / "PWNED_YAML"
    rows = []
    for what, text, loader in (
        ("settings YAML (--config) with a python/object tag", EVIL_KEY, load_settings),
        ("template YAML with a python/object tag", EVIL_YAML, load_template),
    ):
        p = work / f"evil_{loader.__name__}.yaml"
        p.write_text(text.format(marker=marker))
        ok, msg = _refused(lambda p=p, f=loader: f(p), ConfigError)
        rows.append(Row("security", what, "ConfigError; no code run",
                        f"{'refused' if ok else 'NOT refused'}: “{msg}”; command ran: "
                        f"{marker.exists()}", ok and not marker.exists()))
    cfg = work / "evil_cli.yaml"
    cfg.write_text(EVIL_KEY.format(marker=marker))
    r = subprocess.run([*CLI, "run", str(work / "in"), "--out", str(work / "evil_out"),
                        "--config", str(cfg)], cwd=work, capture_output=True, text=True,
                       check=False)
    rows.append(Row("security", "`formdigits run --config` with that YAML",
                    "exit 3 (config error) before any work", f"exit {r.returncode}; "
                    f"command ran: {marker.exists()}", r.returncode == 3
                    and not marker.exists()))
    return rows


def weights_rows(work: Path) -> list[Row]:
    """Pickles, flipped bytes and card mismatches are refused before any tensor is used."""
    import torch

    from models.weights import DEFAULT_WEIGHTS, card_path, load_model

    rows = []
    evil = work / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, evil)  # a pickle: would run code under torch.load
    ok, msg = _refused(lambda: load_model(evil), ModelError)
    rows.append(Row("security", "pickle file named .safetensors as --model",
                    "ModelError (not safetensors)", msg, ok))
    bad = work / "flipped.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, bad)
    shutil.copy(card_path(DEFAULT_WEIGHTS), card_path(bad))
    data = bytearray(bad.read_bytes())
    data[-100] ^= 0xFF  # one byte of tensor data
    bad.write_bytes(bytes(data))
    ok, msg = _refused(lambda: load_model(bad), ModelError)
    rows.append(Row("security", "shipped weights with one byte flipped (model card beside)",
                    "ModelError: sha256 does not match the model card", msg,
                    ok and "model card" in msg))
    card_path(bad).unlink()
    ok, msg = _refused(lambda: load_model(bad), ModelError)
    rows.append(Row("security", "same flipped file without its model card",
                    "ModelError: tensor digest in metadata does not match", msg,
                    ok and "tampered" in msg))
    unsafe = []
    for p in [*ROOT.glob("models/*.py"), *ROOT.glob("pipeline/*.py"), *ROOT.glob("flows/*.py")]:
        src = p.read_text(encoding="utf-8")
        for m in re.finditer(r"\btorch\.load\([^)]*\)|\bpickle\.loads?\(|yaml\.load\(|"
                             r"yaml\.unsafe_load", src):
            if "weights_only=True" not in m.group(0):  # torch's restricted unpickler is fine
                unsafe.append(f"{p.name}: {m.group(0)[:40]}")
    rows.append(Row("security", "source scan: pickle.load / yaml.load / torch.load without "
                    "weights_only=True in models/, pipeline/, flows/", "none",
                    ", ".join(unsafe) or "none", not unsafe))
    return rows


def security_rows(work: Path) -> list[Row]:
    """All security rows."""
    return yaml_rows(work) + weights_rows(work)
