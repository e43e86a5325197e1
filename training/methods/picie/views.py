"""PiCIE's two views of an image, drawn from per-index random tables regenerated every epoch (docs/METHODS.md §5.4).

Official: janghyuncho/PiCIE ``data/coco_train_dataset.py`` (L70-166, ``reshuffle``) and
``data/custom_transforms.py``. Every transform parameter is a function of the dataset index for the whole epoch,
so the k-means pass, the labelling pass and the training pass all see the same two views of image i:

    view 1 input = G(P0(x))  resized to the net size        view 2 input = resize(P1(x))  (G acts on its features)

A :class:`ViewTables` holds one row of uniforms per index (``N_COLUMNS``), drawn from a CPU generator seeded
by one number the method draws from the global torch RNG at each epoch start (and keeps in ``extra_state``), so
a resumed run regenerates identical tables. Columns: 0-4 the geometric G (scale, top, left, h-flip, v-flip,
as :meth:`EquivariantParams.from_uniforms`), 5-15 photometric set P0, 16-26 set P1, each
``[fire, value] x (brightness, contrast, saturation, hue)`` then ``grey fire``, ``blur fire``, ``blur value``.

Photometric ops are ``training.data.photometric``'s float-tensor versions of the official PIL ops (same order:
brightness, contrast, saturation, hue, greyscale, blur). Departures from PIL: float arithmetic instead of uint8,
a true Gaussian kernel instead of PIL's box-blur approximation, and the view-2 downscale uses torch's antialiased
bilinear resize (PIL's bilinear resize is antialiased too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.data.equivariant import EquivariantParams
from training.data.photometric import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    to_greyscale,
)
from training.errors import DataError

GEOMETRIC_COLUMNS = slice(0, 5)
PHOTOMETRIC_COLUMNS = (slice(5, 16), slice(16, 27))
N_COLUMNS = 27


@dataclass(frozen=True)
class ViewSettings:
    """Augmentation settings (PiCIE's official values as defaults)."""

    min_scale: float = 0.5
    h_flip: bool = True
    v_flip: bool = False
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.1
    p_jitter: float = 0.8
    p_grey: float = 0.2
    p_blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    official_no_grey: bool = False  # docs/METHODS.md §P11: the official 'grey' flag is never honoured
    official_blur_sigma: bool = False  # docs/METHODS.md §P12: sigma = |m (u - p) + lo| from the fire uniform u


class ViewTables:
    """Uniforms (N, N_COLUMNS) float64 on the CPU, one row per dataset index, from ``seed``."""

    def __init__(self, n_images: int, seed: int):
        if n_images < 1:
            raise DataError(f"PiCIE needs a non-empty training set, got {n_images} images")
        self.n_images = n_images
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        self.uniforms = torch.rand(n_images, N_COLUMNS, generator=gen, dtype=torch.float64)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) dataset indices -> (B, N_COLUMNS)."""
        index = index.detach().to("cpu", torch.int64).flatten()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.n_images):
            raise DataError(f"batch['index'] must lie in [0, {self.n_images}) (the train set's length at epoch "
                            f"start), got values in [{int(index.min())}, {int(index.max())}]")
        return self.uniforms[index]


def geometric_params(rows: torch.Tensor, s: ViewSettings) -> EquivariantParams:
    return EquivariantParams.from_uniforms(rows[:, GEOMETRIC_COLUMNS], min_scale=s.min_scale, max_scale=1.0,
                                           p_hflip=0.5 if s.h_flip else 0.0, p_vflip=0.5 if s.v_flip else 0.0)


def _jitter_factor(fire: torch.Tensor, value: torch.Tensor, strength: float, p: float, hue: bool) -> torch.Tensor:
    lo, hi = (-strength, strength) if hue else (max(0.0, 1.0 - strength), 1.0 + strength)
    neutral = 0.0 if hue else 1.0
    return torch.where(fire < p, lo + (hi - lo) * value, torch.full_like(value, neutral))


def blur_sigma(fire: torch.Tensor, value: torch.Tensor, s: ViewSettings) -> torch.Tensor:
    """Per-sample blur sigma (0 = no blur). Intended: U(lo, hi) where the blur fires.

    Official (``official_blur_sigma``): sigma = m (u - p) + lo with m = (hi - lo) / (1 - p) and u the *fire*
    uniform (< p), which PIL then uses as |sigma|: (0, 1.8] for the official values instead of [0.1, 2]."""
    lo, hi = s.blur_sigma
    fires = fire < s.p_blur
    if s.official_blur_sigma:
        sigma = ((hi - lo) / (1.0 - s.p_blur) * (fire - s.p_blur) + lo).abs()
    else:
        sigma = lo + (hi - lo) * value
    return torch.where(fires, sigma, torch.zeros_like(sigma))


def photometric_view(x: torch.Tensor, u: torch.Tensor, s: ViewSettings) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] and uniforms (B, 11) -> the photometric view (same shape)."""
    ops = ((s.brightness, adjust_brightness, False), (s.contrast, adjust_contrast, False),
           (s.saturation, adjust_saturation, False), (s.hue, adjust_hue, True))
    for i, (strength, op, is_hue) in enumerate(ops):
        if strength > 0:
            x = op(x, _jitter_factor(u[:, 2 * i], u[:, 2 * i + 1], strength, s.p_jitter, is_hue).to(torch.float32))
    if not s.official_no_grey and s.p_grey > 0:
        x = to_greyscale(x, u[:, 8] < s.p_grey)
    if s.p_blur > 0:
        sigma = blur_sigma(u[:, 9], u[:, 10], s).to(torch.float32)
        if bool((sigma > 0).any()):
            x = gaussian_blur(x, sigma)
    return x


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking, like PIL); identity when the size already fits."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def net_input_size(height: int, width: int, input_size: int | None) -> tuple[int, int]:
    """The size both views enter the net at: the shorter side scaled to ``input_size`` (None: unchanged)."""
    if input_size is None:
        return height, width
    f = input_size / min(height, width)
    return max(1, round(height * f)), max(1, round(width * f))
