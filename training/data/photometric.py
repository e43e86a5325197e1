"""Batched photometric augmentation on tensors (B, C, H, W) in [0, 1], on whatever device they live.

Random factors are drawn per sample on the CPU from the global torch RNG (or ``generator``), so the engine's
RNG checkpoint makes a resumed run draw the same values, on CPU and CUDA alike. One-channel images skip
saturation and hue (they have none); greyscale conversion is a no-op for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.nets.input_adapter import to_grey


@dataclass
class PhotometricConfig:
    """Each factor is drawn from U(1-x, 1+x) (hue: U(-x, x) turns); each op fires with probability ``p_*``."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.125
    p_jitter: float = 1.0  # probability that each jitter op is applied to a sample
    p_grey: float = 0.0
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _fires(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(factor, x)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = to_grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * _per_sample(factor, x) + mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    grey = to_grey(x)
    return ((x - grey) * _per_sample(factor, x) + grey).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` turns (in [-0.5, 0.5]) per sample; RGB only."""
    if x.shape[1] != 3:
        return x
    h, s, v = _rgb_to_hsv(x)
    h = (h + _per_sample(shift, x).squeeze(1)) % 1.0
    return _hsv_to_rgb(h, s, v)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(dim=1)  # (B, H, W) each
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([torch.stack(c, dim=1) for c in
                         [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]], dim=0)  # (6,B,3,H,W)
    idx = i.unsqueeze(0).unsqueeze(2).expand(1, -1, 3, -1, -1)
    return table.gather(0, idx).squeeze(0)


def to_greyscale(x: torch.Tensor, fires: torch.Tensor) -> torch.Tensor:
    """Replace the selected samples by their grey image, keeping the channel count."""
    if x.shape[1] == 1 or not bool(fires.any()):
        return x
    grey = to_grey(x).expand_as(x)
    return torch.where(_per_sample(fires, x).bool(), grey, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (pixels); sigma <= 0 leaves the sample unchanged."""
    b, c, h, w = x.shape
    sig = sigma.clamp_min(1e-6).to(torch.float64)
    radius = max(1, math.ceil(3.0 * float(sig.max())))
    offs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (offs.view(1, -1) / sig.view(-1, 1)) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    k = torch.where((sigma > 0).view(-1, 1), k, (offs == 0).to(k.dtype).view(1, -1))
    k = k.to(device=x.device, dtype=x.dtype)  # (B, 2r+1)
    kx = k.repeat_interleave(c, dim=0).view(b * c, 1, 1, -1)
    ky = k.repeat_interleave(c, dim=0).view(b * c, 1, -1, 1)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kx, groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), ky, groups=b * c)
    return y.view(b, c, h, w)


def photometric_augment(x: torch.Tensor, cfg: PhotometricConfig,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Jitter (brightness, contrast, saturation, hue in that order), then greyscale, then blur."""
    n = x.shape[0]
    ops = [(cfg.brightness, adjust_brightness, False), (cfg.contrast, adjust_contrast, False),
           (cfg.saturation, adjust_saturation, False), (cfg.hue, adjust_hue, True)]
    for strength, op, is_hue in ops:
        if strength <= 0:
            continue
        lo, hi = (-strength, strength) if is_hue else (max(0.0, 1 - strength), 1 + strength)
        factor = _uniform(n, lo, hi, generator)
        neutral = torch.zeros(n) if is_hue else torch.ones(n)
        factor = torch.where(_fires(n, cfg.p_jitter, generator), factor, neutral)
        x = op(x, factor)
    if cfg.p_grey > 0:
        x = to_greyscale(x, _fires(n, cfg.p_grey, generator))
    if cfg.p_blur > 0:
        sigma = _uniform(n, *cfg.blur_sigma, generator)
        sigma = torch.where(_fires(n, cfg.p_blur, generator), sigma, torch.zeros(n))
        if bool((sigma > 0).any()):
            x = gaussian_blur(x, sigma)
    return x
