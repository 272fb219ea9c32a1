"""The cost of saving a resume state every epoch (transfersweep.resume): the same trial with
trainer.resume=false, true with a state every epoch (trainer.resume_every_s=0) and true at
the default interval, and what a hand-written loop's synchronous
`torch.save({model, optimizer})` + fsync per epoch would add (measured here on the same model
and optimizer state), and the resume folder's peak size on disk.

Target: resume on / off <= 1.05 when an epoch takes seconds (all 538 target images); with 25
images an epoch is shorter than one save, so the background writer paces the run.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import compose, report

from transfersweep import inputs, progress, resume, train
from transfersweep.paradigm import Paradigm
from transfersweep.sweep.trial import TrialLink
from transfersweep.tracking import NoRun

EPOCHS = 10


def _trial(overrides: list[str], outputs: Path, on: bool):
    """Seconds of the trial after set-up, the resume folder's peak bytes, val accuracy, model."""
    cfg = compose([*overrides, f"paths.outputs={outputs}", f"trainer.resume={str(on).lower()}"])
    ready = inputs.load(cfg)
    state = resume.open_run(cfg, None, None)
    peak, done = [0], threading.Event()

    def watch() -> None:  # the folder's size, sampled while the trial runs
        while not done.is_set():
            if state is not None and state.dir.is_dir():
                size = sum(f.stat().st_size for f in state.dir.iterdir() if f.is_file())
                peak[0] = max(peak[0], size)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    with progress.installed(state):
        out = train.train(ready, cfg, Paradigm.from_cfg(cfg), TrialLink(), NoRun())
    if state is not None:
        state.wait()  # the last write counts too
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    if state is not None:
        state.finish()
    return seconds, peak[0], out.value, ready.model


def sync_save_seconds(model: torch.nn.Module) -> float:
    """torch.save of the model and AdamW's state (both moments), then fsync: a plain loop's save."""
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        for _ in range(5):
            t0 = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(backbone: str, k_shot: int | None, image_size: int = 32) -> dict[str, float]:
    base = [
        f"backbone={backbone}",
        "regime=target_only",
        "freeze=full",
        f"data.image_size={image_size}",
        f"trainer.target_epochs={EPOCHS}",
        f"data.target.k_shot={'null' if k_shot is None else k_shot}",
        "tracking.enabled=false",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _trial([*base, "trainer.target_epochs=1"], out / "warm", False)  # allocator, kernels
        off = [_trial(base, out / f"off{i}", False) for i in range(2)]
        every = [*base, "trainer.resume_every_s=0"]  # the worst case: a state every epoch
        on_runs = [_trial(every, out / f"on{i}", True) for i in range(2)]
        default = min(_trial(base, out / f"default{i}", True)[0] for i in range(2))
    on, peak = min(r[0] for r in on_runs), max(r[1] for r in on_runs)
    off_s = min(r[0] for r in off)
    sync = sync_save_seconds(off[0][3])
    what = "all 538 images" if k_shot is None else f"{k_shot}-shot"
    report(
        f"{backbone} full, {EPOCHS} epochs ({what}): resume every epoch / off",
        f"{on / off_s:.2f}",
        "<= 1.05" if k_shot is None else "",
        f"{on:.2f}s vs {off_s:.2f}s",
    )
    report(
        "  resume at its default interval (trainer.resume_every_s) / off",
        f"{default / off_s:.2f}",
        "<= 1.05",
        f"{default:.2f}s",
    )
    report(
        "  added per epoch / a plain loop's sync torch.save + fsync",
        f"{(on - off_s) / EPOCHS / sync:.2f}",
        "< 1",
        f"{(on - off_s) / EPOCHS * 1000:.0f} ms vs {sync * 1000:.0f} ms",
    )
    report("  resume folder at its largest", f"{peak / 2**20:.0f} MB", "", "")
    return {
        "on_over_off": on / off_s,
        "default_over_off": default / off_s,
        "added_per_epoch_over_sync_save": (on - off_s) / EPOCHS / sync,
        "peak_mb": peak / 2**20,
        "val_acc_on": on_runs[0][2],  # saving changes nothing: the same accuracy
        "val_acc_off": off[0][2],
    }


def main(backbone: str = "resnet18") -> dict[str, dict[str, float]]:
    return {"all": run(backbone, None), "5shot": run(backbone, 5)}


if __name__ == "__main__":
    main()
