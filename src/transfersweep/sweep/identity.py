"""What a study is about: its default name, and the record that refuses a changed resume.

A study is resumed by name, so a name must not silently collect trials of another project.
The default name comes from what the study is about: the target data (an image folder's own
name; otherwise the data config's name) and the backbone, e.g. `goldfinches-tf_efficientnet_lite0`
or `digits-resnet18` (`make sweep` uses the preset's name: `goldfinches-lite0`); a sweep over
several backbones lists them: `mnist-lite0+resnet18`.

The first worker stores a record in the study (`about`, a user attribute): the data (each
side's config and, for image folders, a fingerprint of the files: relative paths and sizes,
`data/fingerprint.py`), the backbone and its weights, the objective, and the search space. A
later sweep of the same name whose record differs is refused before any trial runs, with what
differs and the fix: a new name (`hydra.sweeper.study_name=`, `STUDY=`), or
`hydra.sweeper.resume_changed=true` (`RESUME_CHANGED=1`) to continue anyway. A study made
before the record existed gets one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

ATTR = "about"


def default_name(
    data_name: str, target_root: str | None, backbone: str, backbones: Any = None
) -> str:
    """`<target folder's name or data name>-<backbone>` (the Hydra resolver ts.study_name);
    with several search.backbones, `<...>-<backbone>+<backbone>...`."""
    what = Path(str(target_root)).expanduser().resolve().name if target_root else data_name
    several = [str(b) for b in backbones or []]
    return f"{what}-{'+'.join(several) if len(several) > 1 else backbone}"


def record(cfg: DictConfig, directions: list[str], objectives: list[str], space: Any) -> dict:
    """What this sweep is about, as plain JSON values (see the module doc)."""
    from transfersweep.config import has_source
    from transfersweep.data import fingerprint

    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    d = c["data"]

    def side(name: str) -> dict[str, Any]:
        ds = dict(d[name])
        if ds.get("kind") == "imagefolder":
            ds["fingerprint"] = fingerprint.files(ds.get("root"))
            ds.pop("root", None)  # the files say it; a moved folder is the same data
        if not ds.get("shift"):  # a key added later: absent and unused read the same
            ds.pop("shift_severity", None)
        return ds

    b = c["backbone"]
    return {
        "data": {
            "target": side("target"),
            "source": side("source") if has_source(cfg.data) else None,
            "splits": {k: d[k] for k in ("val_fraction", "test_fraction", "split_seed")},
        },
        "backbone": {k: b.get(k) for k in ("name", "pretrained", "weights", "key_map", "kwargs")},
        "objective": {"direction": list(directions), "objectives": list(objectives)},
        "space": {k: str(v) for k, v in sorted(space.distributions.items())}
        | {"search": c.get("search")},
    }


def _flat(x: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(x, dict):
        return {prefix: x}
    out: dict[str, Any] = {}
    for k, v in x.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def differences(stored: dict, now: dict) -> list[str]:
    """What differs, one phrase per part: 'data (target.fingerprint.files: 36 -> 24)', ..."""
    out = []
    for part in ("data", "backbone", "objective", "space"):
        a, b = _flat(stored.get(part)), _flat(now.get(part))
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if keys:
            shown = ", ".join(f"{k or part}: {a.get(k)} -> {b.get(k)}" for k in keys[:3])
            out.append(f"{part} ({shown}{', ...' if len(keys) > 3 else ''})")
    return out


def check(study: Any, now: dict, allow_changed: bool) -> list[str]:
    """Store the record in a new study; for an existing one, the differences (empty when it
    is the same study, or when `allow_changed` accepts them: the record is kept as it was)."""
    stored = study.user_attrs.get(ATTR)
    if stored is None:
        study.set_user_attr(ATTR, json.loads(json.dumps(now)))
        return []
    found = differences(stored, json.loads(json.dumps(now)))
    return [] if allow_changed else found
