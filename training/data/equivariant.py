"""PiCIE's equivariant geometric transform G: resized crop, then flips, as batched tensor ops (docs/METHODS.md §5.4).

Official: janghyuncho/PiCIE ``data/custom_transforms.py`` ``RandomResizedCrop`` (L207-237),
``RandomHorizontalTensorFlip`` (L190-203), ``RandomVerticalFlip`` (L173-186); order crop -> h-flip -> v-flip as
in ``transform_eqv``. The same parameters act on the image of view 1 (before the net) and on the feature map of
view 2 (after the net), so both feature maps are spatially aligned:

    featmap1 = f(G(P0(x)))        featmap2 = G(f(resize(P1(x))))

Crop rule (per sample, on a map of side R): side = int(scale * R), top = round((R - side) * offset[0]),
left = round((R - side) * offset[1]); the crop is resized bilinearly (align_corners=False, no antialias) to the
target size. Rounding is Python's round-half-even, as the official code. Maps need not be square: rows use H and
columns use W (the official code only ever sees squares).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class EquivariantParams:
    """Per-sample parameters of G, all on the CPU. ``scale`` (B,) in (0, 1]; ``offset`` (B, 2) = (top, left)
    fractions in [0, 1]; ``hflip``/``vflip`` (B,) bool."""

    scale: torch.Tensor
    offset: torch.Tensor
    hflip: torch.Tensor
    vflip: torch.Tensor

    def __post_init__(self) -> None:
        n = self.scale.shape[0]
        shapes = {"scale": (n,), "offset": (n, 2), "hflip": (n,), "vflip": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"EquivariantParams.{name} must have shape {shape}, got "
                                 f"{tuple(getattr(self, name).shape)}")

    @classmethod
    def from_uniforms(cls, u: torch.Tensor, min_scale: float = 0.5, max_scale: float = 1.0, p_hflip: float = 0.5,
                      p_vflip: float = 0.0) -> EquivariantParams:
        """Map uniforms (B, 5) = (scale, top, left, hflip, vflip) to parameters, as the official tables:
        scale ~ U(min, max), offsets ~ U(0, 1), a flip fires where its uniform < p."""
        u = u.detach().to("cpu", torch.float64)
        if u.ndim != 2 or u.shape[1] != 5:
            raise ValueError(f"expected uniforms of shape (B, 5), got {tuple(u.shape)}")
        return cls(scale=min_scale + (max_scale - min_scale) * u[:, 0], offset=u[:, 1:3].clone(),
                   hflip=u[:, 3] < p_hflip, vflip=u[:, 4] < p_vflip)

    def __len__(self) -> int:
        return int(self.scale.shape[0])


def crop_boxes(height: int, width: int, params: EquivariantParams) -> list[tuple[int, int, int, int]]:
    """(top, left, crop_h, crop_w) per sample on an H x W map, by the official int/round rule."""
    boxes = []
    for s, (oy, ox) in zip(params.scale.tolist(), params.offset.tolist(), strict=True):
        ch, cw = max(1, int(s * height)), max(1, int(s * width))
        boxes.append((round((height - ch) * oy), round((width - cw) * ox), ch, cw))
    return boxes


def resized_crop(x: torch.Tensor, params: EquivariantParams, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size): each sample's crop resized bilinearly (align_corners=False)."""
    if x.ndim != 4 or x.shape[0] != len(params):
        raise ValueError(f"expected (B, C, H, W) with B={len(params)}, got {tuple(x.shape)}")
    out = []
    for i, (top, left, ch, cw) in enumerate(crop_boxes(x.shape[-2], x.shape[-1], params)):
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        out.append(F.interpolate(crop, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out)


def flip(x: torch.Tensor, params: EquivariantParams) -> torch.Tensor:
    """Horizontal then vertical flip of the selected samples of (B, C, H, W)."""
    h = params.hflip.to(x.device).view(-1, 1, 1, 1)
    v = params.vflip.to(x.device).view(-1, 1, 1, 1)
    x = torch.where(h, x.flip(-1), x) if bool(params.hflip.any()) else x
    return torch.where(v, x.flip(-2), x) if bool(params.vflip.any()) else x


def equivariant_transform(x: torch.Tensor, params: EquivariantParams, size: tuple[int, int] | None = None
                          ) -> torch.Tensor:
    """G: resized crop to ``size`` (default: the input size), then flips. Differentiable in ``x``."""
    size = tuple(x.shape[-2:]) if size is None else size  # type: ignore[assignment]
    return flip(resized_crop(x, params, size), params)  # type: ignore[arg-type]
