"""The runtime's speed switches where a CPU can run them: torch.compile (its first step timed
apart, the same training), bf16 autocast with channels_last, the C heap kept between batches,
the GPU pick of one trial per GPU
(real processes in the run registry), and on a GPU only: batches gathered on the device."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch

from conftest import FAST, compose
from transfersweep import cores, devices, engine, memory
from transfersweep import data as data_mod
from transfersweep.config import StageData


def _fit(extra: list[str], compiled: bool = False, epochs: int = 2):
    cfg = compose(FAST + ["backbone=tiny", "optimizer.lr=0.01", "data.batch_size=8", *extra])
    data = data_mod.build(cfg, need_source=False)
    torch.manual_seed(0)
    model = timm.create_model(cfg.backbone.name, num_classes=5, **cfg.backbone.kwargs)
    rt = engine.Runtime.from_cfg(cfg.trainer)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    rt.compiled(model)
    assert engine._is_compiled(model) == compiled
    prep = data_mod.Preprocess(model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    return engine.fit(
        model,
        data.train_batches(StageData.target, cfg, seed=0, device=rt.device),
        data.eval_batches(StageData.target, "val", cfg, device=rt.device),
        prep,
        rt,
        cfg,
        epochs=epochs,
    )


def test_compile_times_its_first_step_apart_and_trains_the_same():
    # the eager backend: TorchDynamo traces the model (what compile changes in the loop)
    # without a C++ toolchain, and computes exactly what the plain model computes
    plain = _fit(["trainer.device=cpu", "trainer.precision=fp32"])
    comp = _fit(
        ["trainer.device=cpu", "trainer.precision=fp32", "trainer.compile=true",
         "trainer.compile_backend=eager"],
        compiled=True,
    )  # fmt: skip
    assert [h.train_loss for h in comp.history] == pytest.approx(
        [h.train_loss for h in plain.history], rel=1e-5
    )
    assert [h.val_acc for h in comp.history] == [h.val_acc for h in plain.history]
    first, later = comp.history[0], comp.history[1]
    assert first.compile_seconds > 0 and later.compile_seconds == 0
    assert all(h.compile_seconds == 0 for h in plain.history)
    assert first.images_per_s > 0
    assert set(comp.best_state) == set(plain.best_state)  # no "_orig_mod." in the keys


def test_bf16_autocast_and_channels_last_train_on_the_cpu():
    out = _fit(
        ["trainer.device=cpu", "trainer.precision=bf16", "trainer.channels_last=true"],
        epochs=3,
    )
    losses = [h.train_loss for h in out.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert out.best_val > 0.2  # above chance on 5 classes


def test_a_run_takes_the_gpu_the_fewest_other_runs_use(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSWEEP_RUNS_DIR", str(tmp_path))
    assert devices.least_used(2, []) == 0
    assert devices.least_used(3, [0, 0, 1]) == 2
    assert devices.least_used(2, [0, 1, 1]) == 0
    folder = cores.folder()
    folder.mkdir(parents=True)
    others = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in "ab"]
    try:
        (folder / str(others[0].pid)).write_text("0")  # a live run on GPU 0
        (folder / str(others[1].pid)).write_text("")  # a live run on the CPU
        (folder / "999999999").write_text("1")  # a dead one: not counted
        with cores.registered():
            assert devices.pick(2) == 1
            assert (folder / str(os.getpid())).read_text() == "1"  # others now count it
            assert devices.pick(2, pinned=0) == 0  # trainer.device=cuda:0
        assert devices.pick(2) == 1  # unregistered: picks, records nothing
        assert not (folder / str(os.getpid())).exists()
    finally:
        for p in others:
            p.kill()
            p.wait()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs it)")
def test_on_a_gpu_in_memory_batches_are_gathered_there_in_the_same_order():
    cfg = compose(FAST + ["backbone=tiny"])
    data = data_mod.build(cfg, need_source=False)
    gpu = torch.device("cuda")
    host = data.train_batches(StageData.target, cfg, seed=3)
    there = data.train_batches(StageData.target, cfg, seed=3, device=gpu)
    assert there.on_device is not None
    for (hx, hy), (gx, gy) in zip(host, there, strict=True):
        assert gx.device.type == "cuda" and gx.dtype == torch.uint8
        assert torch.equal(hx, gx.cpu()) and torch.equal(hy, gy.cpu())
    again = data.eval_batches(StageData.target, "val", cfg, device=gpu)
    assert (
        again.on_device[0].data_ptr()
        == data.eval_batches(StageData.target, "val", cfg, device=gpu).on_device[0].data_ptr()
    )  # copied once per set


@pytest.mark.skipif(cores.available() < 2, reason="one core: nothing to share")
def test_a_run_takes_the_cores_a_finished_sibling_freed(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSWEEP_RUNS_DIR", str(tmp_path))
    folder = cores.folder()
    folder.mkdir(parents=True)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (folder / str(sibling.pid)).touch()  # a live run beside this one
    seen: list[int] = []

    def on_epoch(_stats):
        seen.append(torch.get_num_threads())
        if len(seen) == 1:  # the sibling ends after this run's first epoch
            sibling.kill()
            sibling.wait()

    before = torch.get_num_threads()
    try:
        with cores.registered():
            cfg = compose(FAST + ["backbone=tiny", "trainer.threads=null"])
            rt = engine.Runtime.from_cfg(cfg.trainer)
            rt.apply()
            total = cores.total()
            assert rt.threads == max(1, total // 2)
            data = data_mod.build(cfg, need_source=False)
            model = timm.create_model(cfg.backbone.name, num_classes=5, **cfg.backbone.kwargs)
            prep = data_mod.Preprocess(model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
            batches = data.train_batches(StageData.target, cfg, seed=0, device=rt.device)
            val = data.eval_batches(StageData.target, "val", cfg, device=rt.device)
            engine.fit(model, batches, val, prep, rt, cfg, epochs=2, on_epoch=on_epoch)
    finally:
        sibling.kill()
        torch.set_num_threads(before)
    assert seen == [max(1, total // 2), total]  # half beside it, all of them once it ended


# Three 20 MB blocks live together (a step's activations), freed, allocated again: the page
# faults of three later rounds, in a fresh process whose runtime was applied with heap_cache.
_REALLOC_FAULTS = """
import resource, sys, torch
from transfersweep.engine import Runtime
from conftest import compose
cfg = compose(["trainer.device=cpu", "trainer.threads=1", "trainer.heap_cache=" + sys.argv[1]])
Runtime.from_cfg(cfg.trainer).apply()
def step():
    blocks = [torch.ones(5 * 2**20) for _ in range(3)]
step()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults))
"""


def _python(code: str, *args: str, env: dict | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
        cwd=os.path.dirname(__file__), env=env,
    )  # fmt: skip
    return out.stdout


@pytest.mark.skipif(not memory._glibc(), reason="the heap cache is glibc's (mallopt)")
def test_a_run_keeps_the_memory_a_batch_freed_for_the_next():
    # glibc's default: blocks mapped anew, or the freed heap trimmed, so their 4 KB pages fault
    # in zeroed again (measured 20k-36k); kept: 0, or one 20 MB block now and then (5120)
    assert int(_python(_REALLOC_FAULTS, "false")) > 15_000
    assert int(_python(_REALLOC_FAULTS, "true")) < 12_000


_RESTARTED = """
import os
from transfersweep import memory
print("start", os.environ.get("GLIBC_TUNABLES"), flush=True)
memory.restart_with_huge_pages()
import resource, torch
torch.ones(2**24)  # 64 MB: mapped, over the heap's 32 MB
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(2**24)
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    memory._transparent_huge_pages() != "madvise" or not memory._glibc(),
    reason="huge pages on request only: glibc and the kernel's THP mode madvise",
)
def test_the_command_starts_again_once_with_large_blocks_on_huge_pages():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",)}
    lines = _python(_RESTARTED, env={**env, "GLIBC_TUNABLES": "glibc.malloc.check=0"})
    starts = [ln for ln in lines.splitlines() if ln.startswith("start")]
    # the same command again (its first line printed twice), the user's tunables kept
    assert starts == [
        "start glibc.malloc.check=0",
        f"start glibc.malloc.check=0:{memory.HUGE_PAGES}",
    ]
    assert int(lines.split()[-1]) < 1000  # 64 MB in 2 MB pages (4 KB pages: 16384 faults)
    lines = _python(_RESTARTED, env={**env, "TRANSFERSWEEP_HUGE_PAGES": "0"})
    assert lines.startswith("start None\nfaults") and int(lines.split()[-1]) > 16000  # opt-out
