"""What pixels a backbone wants: input size, resize, crop, interpolation and mean/std, from timm.

timm's data API decides them, as for timm's own validation: `resolve_data_config` on the
backbone's `pretrained_cfg`, and `create_transform` for the resize + centre crop. Three keys
override the model's values (null keeps them): `data.image_size` (the input size; null: the
pretrained one, 224 for most ImageNet models), `data.crop_pct` (resize the shorter side to
size / crop_pct, then centre-crop size; 1.0 keeps the whole image, which embedded digit data
sets use: their digits fill the frame) and `data.interpolation`.

Where each step runs:
- the geometry (resize + crop, timm's transform on a PIL image) runs ONCE per image, when it
  is decoded into the in-memory uint8 cache (`images.decode`, `images.to_rgb_uint8`); every
  epoch then gathers bytes;
- mean/std run per batch on the training device (`batches.Preprocess`);
- the champion's `predict` runs the same two steps with the values its checkpoint's config
  records (`resolve` writes the resolved values back into the run's config), so training and
  prediction see the same pixels (tests/test_preprocessing.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from PIL import Image


@dataclass(frozen=True)
class ModelInput:
    size: int
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(
        cls,
        backbone_name: str,
        image_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
    ) -> ModelInput:
        """timm's data config for `backbone_name` (its default pretrained tag when it has none),
        with the given overrides."""
        import timm
        from timm.data import resolve_data_config

        pretrained = timm.get_pretrained_cfg(backbone_name)
        args: dict[str, Any] = {}
        if image_size:
            args["input_size"] = (3, int(image_size), int(image_size))
        if crop_pct:
            args["crop_pct"] = float(crop_pct)
        if interpolation:
            args["interpolation"] = str(interpolation)
        c = resolve_data_config(
            args=args or None,
            pretrained_cfg=pretrained.to_dict() if pretrained else {"crop_pct": 0.875},
        )
        return cls(
            size=int(c["input_size"][-1]),
            interpolation=str(c["interpolation"]),
            crop_pct=float(c["crop_pct"]),
            crop_mode=str(c.get("crop_mode", "center")),
            mean=tuple(float(v) for v in c["mean"]),
            std=tuple(float(v) for v in c["std"]),
        )

    @classmethod
    def resolve(cls, cfg: DictConfig) -> ModelInput:
        """The run's model input; writes the resolved size, crop and interpolation back into
        `cfg.data`, so interpolations (a ViT's img_size), logs and the checkpoint's config
        hold the values training used."""
        d = cfg.data
        mi = cls.of(cfg.backbone.name, d.image_size, d.crop_pct, d.interpolation)
        d.image_size, d.crop_pct, d.interpolation = mi.size, mi.crop_pct, mi.interpolation
        return mi

    def pil(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> uint8 (3, size, size), through timm's resize + centre crop."""
        return chw(_geometry(self)(image.convert("RGB")))

    def arrays(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size), image by image as `pil` does."""
        if x.shape[-2:] == (self.size, self.size) and self.crop_pct == 1.0:
            return x.contiguous()  # the transform would be the identity
        return through_pil(x, _geometry(self), self.size)


def chw(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> uint8 (3, H, W)."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def through_pil(x: torch.Tensor, transform: Any, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size): each image through a PIL `transform`
    (timm's eval geometry here, its train transform in data.augment)."""
    import torch
    from PIL import Image

    out = torch.empty((len(x), 3, size, size), dtype=torch.uint8)
    hwc = x.permute(0, 2, 3, 1).numpy()
    for i in range(len(x)):
        out[i] = chw(transform(Image.fromarray(hwc[i])))
    return out


@functools.lru_cache(maxsize=8)
def _geometry(mi: ModelInput) -> Any:
    """timm's eval transform without its ToTensor/Normalize (those run on the device)."""
    from timm.data import create_transform
    from torchvision import transforms

    t = create_transform(
        input_size=(3, mi.size, mi.size),
        interpolation=mi.interpolation,
        crop_pct=mi.crop_pct,
        crop_mode=mi.crop_mode,
        mean=mi.mean,
        std=mi.std,
    )
    steps = [
        s
        for s in t.transforms
        if type(s).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")
    ]
    return transforms.Compose(steps)
