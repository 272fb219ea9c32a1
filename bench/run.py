"""`make bench`: every benchmark, printed as ratios measured in this one run on this machine."""

from __future__ import annotations

import datetime
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(__file__))

import bench_block_cache  # noqa: E402
import bench_cores  # noqa: E402
import bench_epoch  # noqa: E402
import bench_feature_cache  # noqa: E402
import bench_memory  # noqa: E402
import bench_pruning  # noqa: E402
import bench_resume  # noqa: E402
import bench_reuse  # noqa: E402
import bench_startup  # noqa: E402
import bench_timm  # noqa: E402
import bench_tracking  # noqa: E402
import bench_verdict  # noqa: E402
import bench_workers  # noqa: E402
import torch  # noqa: E402

if __name__ == "__main__":
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(
        f"transfersweep bench | {datetime.date.today()} | {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {gpu} | torch {torch.__version__}",
        flush=True,
    )
    only = set(sys.argv[1:])
    for name, fn in [
        ("startup", bench_startup.main),
        ("epoch", bench_epoch.main),
        ("feature_cache", bench_feature_cache.main),
        ("block_cache", bench_block_cache.main),
        ("tracking", bench_tracking.main),
        ("reuse", bench_reuse.main),
        ("resume", bench_resume.main),
        ("pruning", bench_pruning.main),
        ("memory", bench_memory.main),
        ("workers", bench_workers.main),
        ("cores", bench_cores.main),
        ("verdict", bench_verdict.main),
        ("timm", lambda: bench_timm.main([])),  # about 20 minutes: only when named
    ]:
        if (not only and name != "timm") or name in only:
            fn()
