"""Build the tiny default's warmed-up models and ship them in ``data/tiny/<warm-up key>/``.

    python data/build_tiny_models.py

Runs (or takes from ``~/.cache/tango/tiny``) the default warm-up, ``WarmupSettings()`` (the
`configs/tiny.yaml` run with seed 0), and copies its ``generator/``, ``verifier/`` and ``report.json``
here, replacing any folder of an older key. ``tango_steps.training.warmup.warmed_up_models`` reads a shipped
folder only under its own key, so after a change of the warm-up (its settings or WARMUP_VERSION) the
old models are never used: rebuild them with this command (tests/unit/test_warmup.py fails until then).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tango_steps.models.loading import cache_dir
from tango_steps.training.warmup import SHIPPED, WarmupSettings, warmed_up_models


def main() -> None:
    settings = WarmupSettings()
    built, report = warmed_up_models(settings, root=cache_dir() / "tiny")
    target = SHIPPED / settings.key()
    for old in SHIPPED.glob("*"):
        if old != target:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
            print(f"removed stale {old}")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in ("generator", "verifier"):
        shutil.copytree(built / part, tmp / part)
    shutil.copy2(built / "report.json", tmp / "report.json")  # last: its presence marks a complete folder
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(
        f"shipped {target} ({size / 2**20:.1f} MiB): generator {report['generator_heldout']}, "
        f"verifier {report['verifier_heldout']}"
    )


if __name__ == "__main__":
    main()
