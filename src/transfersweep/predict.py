"""Predict class labels with a trained model:

    python -m transfersweep.predict model=<models:/name@alias | runs:/<run id> | folder> \\
        images=<folder or image file> [out=predictions.csv] [batch_size=256] [device=cpu]

`model` is a registered model (`models:/digits-resnet18@champion`, what a sweep registers),
a run (`runs:/<id>`: its pyfunc model if it has one, else its checkpoint), or a local folder
(an MLflow model, or a checkpoint folder holding model.safetensors + config.yaml). Writes
`predictions.csv` (path, label, probability); when `images` has one sub-folder per class, it
also prints the accuracy. The images are resized, cropped and normalised exactly as in
training (data.model_input: the values the checkpoint's config records).

`Predictor` is also what the registered pyfunc model (transfersweep.champion_model) runs.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transfersweep.errors import ConfigError, TransferSweepError

log = logging.getLogger("transfersweep")


class Predictor:
    """A checkpoint as a classifier: images in (file paths or uint8 arrays), labels out."""

    def __init__(self, weights: str | Path, config: str | Path, device: str = "cpu"):
        import torch
        from omegaconf import OmegaConf
        from safetensors.torch import load_file

        from transfersweep import backbone
        from transfersweep.data import ModelInput, Preprocess

        doc = OmegaConf.load(config)
        info, cfg = doc.checkpoint, doc.config
        cfg.backbone.pretrained, cfg.backbone.weights = False, None  # the checkpoint has them
        self.classes: list[str] = list(info.classes)
        self.logits = int(info.target_logits)  # joint heads: the target classes come first
        d = cfg.data  # a checkpoint older than crop_pct was resized whole, bilinear
        crop, interp = d.get("crop_pct", 1.0), d.get("interpolation", "bilinear")
        self.input = ModelInput.of(cfg.backbone.name, d.image_size, crop, interp)
        self.image_size = self.input.size
        self.device = torch.device(device)
        self.model = backbone.create(cfg, int(info.num_classes))
        self.model.load_state_dict(load_file(str(weights)), strict=True)
        self.model.to(self.device).eval()
        self.prep = Preprocess.of(self.input).to(self.device)
        self.info = OmegaConf.to_container(info)

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu") -> Predictor:
        folder = Path(folder)
        return cls(folder / "model.safetensors", folder / "config.yaml", device)

    def to_uint8(self, images: Any) -> Any:
        """File paths, one (H,W[,C]) array, a list of them, or a (N,H,W[,C]) / (N,C,H,W) uint8
        array -> uint8 (N,3,S,S) as training saw it."""
        import torch

        from transfersweep.data.images import decode, to_rgb_uint8

        if isinstance(images, (str, Path)):
            images = [images]
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return to_rgb_uint8(images, self.input, channels_last=images.shape[-1] in (1, 3))
        out = []
        for im in images:
            if isinstance(im, (str, Path)):
                out.append(decode(str(im), self.input))
                continue
            a = np.asarray(im)
            last = a.ndim == 3 and a.shape[-1] in (1, 3)
            out.append(to_rgb_uint8(a[None], self.input, channels_last=last)[0])
        return torch.stack(out) if out else torch.empty((0, 3, self.image_size, self.image_size))

    def predict(self, images: Any, batch_size: int = 256) -> tuple[list[str], np.ndarray]:
        """(labels, probabilities of those labels) for a batch of images."""
        import torch

        x = self.to_uint8(images)
        probs = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                logits = self.model(self.prep(x[i : i + batch_size].to(self.device)))
                probs.append(torch.softmax(logits.float()[:, : self.logits], dim=1).cpu())
        p = torch.cat(probs) if probs else torch.empty((0, self.logits))
        best = p.max(dim=1)
        return [self.classes[i] for i in best.indices.tolist()], best.values.numpy()


def image_files(root: Path) -> tuple[list[Path], list[str | None]]:
    """The images under `root` (sorted) and, when root has class sub-folders, their classes."""
    from transfersweep.data.images import IMAGE_EXTENSIONS, list_image_files

    if root.is_file():
        return [root], [None]
    if not root.is_dir():
        raise ConfigError(f"images={str(root)!r} does not exist: give an image file or a folder")
    files = [Path(f) for f in list_image_files(root)]
    if not files:
        raise ConfigError(
            f"images={str(root)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
        )
    by_class = any(p.is_dir() for p in root.iterdir())
    return files, [
        p.relative_to(root).parts[0] if by_class and p.parent != root else None for p in files
    ]


def load(model: str, device: str = "cpu") -> Any:
    """A callable images -> (labels, probabilities) for `model` (see the module docstring)."""
    import mlflow

    path = Path(model)
    if path.exists():
        if (path / "MLmodel").exists():
            return _pyfunc(mlflow.pyfunc.load_model(str(path)))
        if (path / "model.safetensors").exists():
            return Predictor.from_folder(path, device).predict
        raise ConfigError(
            f"model={model!r} is neither an MLflow model (MLmodel) nor a checkpoint folder "
            "(model.safetensors + config.yaml)"
        )
    if model.startswith("runs:/") and model.count("/") == 1:  # runs:/<id>: its model or checkpoint
        run_id = model.removeprefix("runs:/")
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
        if "model" in names:
            return _pyfunc(mlflow.pyfunc.load_model(f"{model}/model"))
        if "checkpoint" not in names:
            raise ConfigError(
                f"run {run_id} logged no model or checkpoint (tracking.log_checkpoint)"
            )
        folder = mlflow.artifacts.download_artifacts(f"{model}/checkpoint")
        return Predictor.from_folder(folder, device).predict
    if model.startswith(("models:/", "runs:/")):
        return _pyfunc(mlflow.pyfunc.load_model(model))
    raise ConfigError(f"model={model!r}: give models:/<name>@<alias>, runs:/<run id> or a folder")


def _pyfunc(m: Any) -> Any:
    def predict(images: Any, batch_size: int = 256) -> tuple[list[str], np.ndarray]:
        frame = m.predict(images if isinstance(images, np.ndarray) else [str(p) for p in images])
        return list(frame["label"]), frame["probability"].to_numpy()

    return predict


def _args(argv: Sequence[str]) -> dict[str, str]:
    allowed = {"model", "images", "out", "batch_size", "device", "tracking_uri"}
    args = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in allowed:
            raise ConfigError(
                f"unknown argument {a!r}: use model=... images=... [out=predictions.csv] "
                "[batch_size=256] [device=cpu] [tracking_uri=...]"
            )
        args[key] = value
    for key in ("model", "images"):
        if not args.get(key):
            raise ConfigError(
                f"missing {key}=...: python -m transfersweep.predict model=... images=..."
            )
    return args


USAGE = """usage: transfersweep-predict model=<model> images=<folder|file> [out=predictions.csv]
       [batch_size=256] [device=cpu|cuda] [tracking_uri=<MLflow URI>]

Classify images with a trained model; writes predictions.csv (path, label, probability) and,
when images= is a folder of class sub-folders, prints the accuracy.

  model=models:/<study>@champion   a sweep's registered champion (make predict uses this)
  model=runs:/<run_id>             the checkpoint a run logged
  model=<folder>                   a downloaded checkpoint folder (model.safetensors + config.yaml)

The MLflow store is MLFLOW_TRACKING_URI, tracking_uri=, or ./outputs/mlflow.db (the default)."""


def main(argv: Sequence[str] | None = None) -> float | None:
    """Write predictions.csv; returns the accuracy when the folder has class sub-folders."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return None
    args = _args(argv)
    files, truth = image_files(Path(args["images"]))
    import os

    import mlflow

    # The store transfersweep writes by default, unless told otherwise (as `make ui` reads it).
    default = (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('outputs').resolve()}/mlflow.db"
    )
    mlflow.set_tracking_uri(args.get("tracking_uri", default))
    predict = load(args["model"], args.get("device", "cpu"))
    labels, probs = predict(files, int(args.get("batch_size", 256)))
    out = Path(args.get("out", "predictions.csv"))
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "probability"])
        w.writerows(
            [str(f), label, f"{p:.6f}"] for f, label, p in zip(files, labels, probs, strict=True)
        )
    print(f"{len(files)} predictions -> {out}")
    known = [(t, label) for t, label in zip(truth, labels, strict=True) if t is not None]
    if not known:
        return None
    acc = sum(t == label for t, label in known) / len(known)
    print(f"accuracy {acc:.4f} on {len(known)} images in class folders")
    return acc


def cli() -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        main()
    except TransferSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
