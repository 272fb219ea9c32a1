"""The benchmarks still run (tiny model, one round); their numbers are only read by people, never asserted."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


def test_epoch_and_feature_cache_benchmarks_run(capsys):
    import bench_epoch
    import bench_feature_cache

    assert bench_epoch.main(backbone="tiny", rounds=1) > 0
    slower, floor_ratio = bench_feature_cache.main(backbone="tiny")
    assert slower > 0 and floor_ratio > 0
    out = capsys.readouterr().out
    assert "framework / plain loop" in out and "uncached / cached" in out
