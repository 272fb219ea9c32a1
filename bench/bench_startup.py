"""Start-up: --help, --cfg job and config errors must not pay for torch/timm/mlflow imports."""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import cli, median, report

CASES = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job"],
    "config error (wrong type: trainer.target_epochs=many)": ["trainer.target_epochs=many"],
    "config error (range: trainer.target_epochs=0)": ["trainer.target_epochs=0"],
}


def main(repeats: int = 3) -> dict[str, float]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in CASES.items():
            times = [
                cli([*args, f"paths.outputs={tmp}"] if args[0] != "--help" else args, Path(tmp))[0]
                for _ in range(repeats)
            ]
            out[name] = median(times)
            report(f"start-up: {name}", f"{out[name]:.2f}s")
    return out


if __name__ == "__main__":
    main()
