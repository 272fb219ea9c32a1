"""The backbone as a searched dimension: `search.backbones=[lite0,resnet18,convnext_atto.d2_in1k]`.

Each entry is a preset of conf/backbone (its own weights, input size and optimizer preset, as
`backbone=<preset>` composes them) or any timm name (with timm's hub weights, as `make sweep
BACKBONE=<name>` runs it: `backbone=timm backbone.name=<name>`). The sweep samples the entry
like the regime; its job gets the entry's overrides plus `trial.backbone=<entry>`, which puts the
entry in front of the paradigm's name (`lite0/target_only+full`), so the table, CSVs, heatmap,
verdict and champion are per backbone x paradigm. Pretrain reuse keys on the composed backbone
(reuse.py), feature caches live inside one run, and a resumed trial re-runs its own overrides.

Decided where the issue is silent:
- `optimizer.lr` stays one dimension; its range is the union of the backbones' optimizer
  presets' `lr_range` (a pretrained preset's [3e-5, 1e-3] and a from-scratch one's differ),
  and each backbone's default trial uses its own preset's `lr`.
- the study's default name lists the backbones (`mnist-lite0+resnet18`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transfersweep.errors import ConfigError

KEY = "backbone"  # the sampled dimension's name (a trial parameter, shown in Optuna's UI)


def entries(config: Any) -> list[str]:
    """The searched backbones ([] when the sweep has no backbone dimension), checked."""
    wanted = [str(b) for b in (config.search.get("backbones") or [])]
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"search.backbones={wanted} names a backbone twice; list each once")
    return wanted if len(wanted) > 1 else []


def overrides(entry: str, presets: Sequence[str]) -> tuple[str, ...]:
    """A job's overrides for one entry: the preset, or timm's hub weights by name."""
    if entry in presets:
        return (f"backbone={entry}",)
    return ("backbone=timm", f"backbone.name={entry}")


def check_names(wanted: list[str], presets: Sequence[str]) -> None:
    """An entry that is neither a preset nor a timm model fails before anything runs."""
    from transfersweep.backbone import check_name

    for entry in wanted:
        if entry in presets:
            continue
        try:
            check_name(entry)
        except ConfigError as e:
            raise ConfigError(
                f"search.backbones: {entry!r} is neither a preset of conf/backbone "
                f"({', '.join(sorted(presets))}) nor a timm model: {e}"
            ) from None


def lr_range(configs: dict[str, Any]) -> tuple[float, float]:
    """The union of the backbones' optimizer lr ranges (module doc)."""
    ranges = [tuple(float(x) for x in c.optimizer.lr_range) for c in configs.values()]
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def composed(
    wanted: list[str], presets: Sequence[str], fixed: list[str], compose: Callable[[list[str]], Any]
) -> dict[str, Any]:
    """Each entry's job config (the sweep's fixed overrides plus the entry's)."""
    return {b: compose([*fixed, *overrides(b, presets), f"trial.backbone={b}"]) for b in wanted}
