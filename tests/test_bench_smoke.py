"""The benchmarks still run (tiny model, one round); their numbers are only read by people, never asserted."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # runs the benchmarks

sys.path.insert(0, str(ROOT / "bench"))


def test_epoch_and_feature_cache_benchmarks_run(capsys):
    import bench_epoch
    import bench_feature_cache

    epoch = bench_epoch.main(backbone="tiny", rounds=1)
    assert epoch["last_loss"] < epoch["first_loss"]  # the timed epochs really trained the model
    cache = bench_feature_cache.main(backbone="tiny")
    # the cached and uncached trials did the same work: the same accuracy, to float rounding
    assert cache["cached_val_acc"] == pytest.approx(cache["uncached_val_acc"], abs=1e-3)
    out = capsys.readouterr().out
    assert "framework / plain loop" in out and "uncached / cached" in out


def test_block_cache_benchmark_runs(capsys):
    import bench_block_cache

    r = bench_block_cache.run("tiny", 32, 10)
    assert r["cached_val_acc"] == pytest.approx(r["uncached_val_acc"], abs=1e-3)  # same work
    assert "last_blocks (1 block) trial" in capsys.readouterr().out


def test_resume_benchmark_runs(capsys):
    import bench_resume

    r = bench_resume.run("tiny", 5, image_size=16)
    assert r["peak_mb"] > 0  # a state was really written every epoch
    assert r["val_acc_on"] == r["val_acc_off"]  # and saving it changed nothing
    assert "resume every epoch / off" in capsys.readouterr().out


def test_timm_side_by_side_benchmark_runs(capsys):
    # timm's own train.py, transfersweep and the plain loop on the same folder, weights, steps
    import bench_timm

    args = "--sizes 16 --models tiny --epochs 16:2 --repeats 16:1 --heap-cache-all"
    bench_timm.main(args.split())
    out = capsys.readouterr().out
    for name in (
        "timm:",
        "transfersweep:",
        "plain:",
        "transfersweep / timm train.py",
        "timm +heap",
    ):
        assert name in out, out
