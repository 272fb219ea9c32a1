"""Which input size for the real task (data=mnist backbone=lite0)? Quality against time.

For each size: the linear probe on ImageNet features (target_only + last_layer, 5 paired
repeats: how good the frozen features are at that size) and full fine-tuning (target_only +
full, 3 repeats, 20 epochs: what training costs there). Each configuration is one run of the
real entrypoint; the script prints its done-line and its wall time.

    .venv/bin/python bench/real_task_size.py [sizes...]   # default 32 48 64 96 128
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time

RUNS = {
    "probe": ["regime=target_only", "freeze=last_layer", "trainer.repeats=5"],
    "full": ["regime=target_only", "freeze=full", "trainer.repeats=3", "trainer.target_epochs=20"],
}


def main(sizes: list[int]) -> None:
    out = tempfile.mkdtemp(prefix="size-")
    print("| size | run | val | test | ood (digits) | seconds |\n|---|---|---|---|---|---|")
    for size in sizes:
        for name, args in RUNS.items():
            cmd = [sys.executable, "-m", "transfersweep.train", "data=mnist", "backbone=lite0",
                   f"data.image_size={size}", f"paths.outputs={out}", "trainer.resume=false",
                   "trainer.reuse_pretrain=false", *args]  # fmt: skip
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            lines = p.stdout.splitlines() + p.stderr.splitlines()
            done = next((line for line in lines if " done: " in line), "")
            m = re.search(r"val_acc (.+?)  test_acc (.+?)  ood_acc (.+?) \|", done)
            if not m:
                print(f"| {size} | {name} | failed: {(p.stderr or p.stdout)[-300:]} |")
                continue
            print(f"| {size} | {name} | {m[1]} | {m[2]} | {m[3]} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [32, 48, 64, 96, 128])
