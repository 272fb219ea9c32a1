"""Out-of-distribution copies of the target test split (`data.target.ood`), for `ood_acc`.

A shift changes how the images look, never their labels; `data.target.ood_severity` scales it
(1.0 is the default strength below). Applied once, to the uint8 test images, with a fixed
seed, so every run and repeat is scored on the same shifted images.

    rotate   rotation by 30 degrees x severity (zero fill)
    noise    additive Gaussian noise, sigma = 40 grey levels x severity
    blur     Gaussian blur, sigma = 1.5 pixels x severity at 32 px (scaled with the size)
    invert   255 - x, blended in by min(severity, 1)
"""

from __future__ import annotations

import math

import torch


def apply(images: torch.Tensor, shift: str, severity: float, seed: int = 0) -> torch.Tensor:
    """uint8 (N,3,S,S) -> the same images shifted, uint8."""
    import torchvision.transforms.v2.functional as TF

    x = images
    if shift == "rotate":
        return TF.rotate(x, 30.0 * severity)
    if shift == "noise":
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(x.shape, generator=gen) * 40.0 * severity
        return (x.float() + noise).round().clamp(0, 255).to(torch.uint8)
    if shift == "blur":
        sigma = max(1e-3, 1.5 * severity * x.shape[-1] / 32)
        k = 2 * math.ceil(2 * sigma) + 1
        return TF.gaussian_blur(x, [k, k], [sigma, sigma])
    if shift == "invert":
        a = min(max(severity, 0.0), 1.0)
        return (x.float() * (1 - a) + (255.0 - x.float()) * a).round().to(torch.uint8)
    raise ValueError(shift)
