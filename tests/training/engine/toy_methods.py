"""Toy methods and a toy dataset for the engine tests, registered only here (``--plugin`` this module).

``toy_seg`` is a two-layer conv net. Its loss is either a per-sample mean (``loss: per_sample``: mean pixel
entropy of the cluster probabilities, plus a flip-consistency term) or uses a batch statistic reduced with
``ctx.all_reduce_sum`` (``loss: marginal``: minus the entropy of the batch's mean cluster distribution, as IIC's
marginals), so the DDP tests can prove that the hook makes W ranks x batch b equal one batch of W*b.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from training.methods.base import FitContext, Method, MethodConfig, register_method
from usseg_sdk.meta import InputSpec

EPS = 1e-8


@dataclass
class ToyConfig(MethodConfig):
    n_clusters: int = 3
    channels: int = 1
    lr: float = 0.5
    hidden: int = 4
    over_clusters: int = 0  # > 0 adds an over-clustering head "over" (evaluated many-to-one)
    loss: str = "per_sample"  # per_sample | marginal
    use_all_reduce: bool = True  # marginal loss: reduce the statistic across ranks (False: the wrong way)
    augment: bool = True  # random flips drawn from the global torch RNG (resume must repeat them)
    optimizer: str = "sgd"  # sgd | adam
    nan_at_step: int | None = None  # the loss is NaN when ctx.step equals this (0-based step index)
    poison_at_step: int | None = None  # on_step_end sets a weight to inf when ctx.step equals this
    step_sleep_s: float = 0.0  # slow steps down (the SIGKILL test needs time to kill mid-run)
    epoch_pass: bool = False  # on_epoch_start iterates ctx.train_loader, like PiCIE's k-means
    eval_sleep_s: float = 0.0  # slow evaluation down: each inference forward sleeps this long


class _ToyNet(nn.Module):
    """Inference net sharing the method's layers: [0, 1] images -> cluster probabilities."""

    def __init__(self, method: ToySeg, head: str):
        super().__init__()
        self.trunk = method.trunk
        self.head = method.heads[head]
        self.sleep_s = method.config.eval_sleep_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ToySeg.inference_calls += 1
        time.sleep(self.sleep_s)
        return F.softmax(self.head(self.trunk(x)), dim=1)


@register_method("toy_seg")
class ToySeg(Method):
    """Tiny conv net for engine tests. Set ``ToySeg.record = []`` to record the hook calls."""

    config_class = ToyConfig
    record: list[str] | None = None
    inference_calls = 0  # forward passes of inference nets (evaluation), all instances
    grad_norms: list[float] = []  # noqa: RUF012  (global norm seen in after_backward, appended per step)

    def _record(self, name: str) -> None:
        if ToySeg.record is not None:
            ToySeg.record.append(name)

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.trunk = nn.Sequential(nn.Conv2d(config.channels, config.hidden, 3, padding=1), nn.ReLU())
        heads = {"main": nn.Conv2d(config.hidden, config.n_clusters, 1)}
        if config.over_clusters:
            heads["over"] = nn.Conv2d(config.hidden, config.over_clusters, 1)
        self.heads = nn.ModuleDict(heads)
        self.register_buffer("feature_mean", torch.zeros(config.hidden))
        self.epochs_started = 0

    def training_step(self, batch: dict[str, torch.Tensor], ctx: FitContext) -> dict[str, torch.Tensor]:
        cfg: ToyConfig = self.config  # type: ignore[assignment]
        if cfg.step_sleep_s:
            time.sleep(cfg.step_sleep_s)
        self._record(f"training_step:{ctx.step}")
        x = batch["image"]  # (B, C, H, W)
        if cfg.augment:
            flip = (torch.rand(x.shape[0]) < 0.5).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        features = self.trunk(x)
        loss = torch.zeros((), device=x.device)
        logs = {}
        for name, head in self.heads.items():
            p = F.softmax(head(features), dim=1)  # (B, K, H, W)
            entropy = -(p * torch.log(p + EPS)).sum(dim=1).mean()  # per-sample (and pixel) mean
            if cfg.loss == "per_sample":
                p_flip = F.softmax(head(self.trunk(x.flip(-1))), dim=1).flip(-1)
                loss = loss + entropy + ((p - p_flip) ** 2).mean()
            else:
                stat = p.sum(dim=(0, 2, 3))  # (K,)
                count = torch.tensor(float(p.shape[0] * p.shape[2] * p.shape[3]), device=x.device)
                if cfg.use_all_reduce:
                    stat, count = ctx.all_reduce_sum(stat), ctx.all_reduce_sum(count)
                marginal = stat / count
                loss = loss + entropy + (marginal * torch.log(marginal + EPS)).sum()
            logs[f"entropy_{name}"] = entropy.detach()
        if cfg.nan_at_step is not None and ctx.step == cfg.nan_at_step:
            loss = loss * float("nan")
        return {"loss": loss, **logs}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        if self.config.optimizer == "adam":  # type: ignore[attr-defined]
            return torch.optim.Adam(self.parameters(), lr=self.config.lr)
        return torch.optim.SGD(self.parameters(), lr=self.config.lr, momentum=0.9)

    def on_fit_start(self, ctx: FitContext) -> None:
        self._record("on_fit_start")

    def after_backward(self, ctx: FitContext) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self._record(f"after_backward:{len(grads)}")
        ToySeg.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def on_step_end(self, ctx: FitContext) -> None:
        self._record(f"on_step_end:{ctx.step}")
        if ctx.step == self.config.poison_at_step:  # type: ignore[attr-defined]
            with torch.no_grad():
                self.heads["main"].bias[0] = float("inf")

    def on_epoch_end(self, ctx: FitContext) -> None:
        self._record(f"on_epoch_end:{ctx.epoch}")

    def on_epoch_start(self, ctx: FitContext) -> None:
        self._record(f"on_epoch_start:{ctx.epoch}:{ctx.train_loader is not None}")
        self.epochs_started += 1
        if not self.config.epoch_pass or ctx.train_loader is None:  # type: ignore[attr-defined]
            return
        total, n = torch.zeros_like(self.feature_mean), 0
        with torch.no_grad():
            for batch in ctx.train_loader:
                f = self.trunk(batch["image"].to(ctx.device))  # (B, hidden, H, W)
                total += ctx.all_reduce_sum(f.sum(dim=(0, 2, 3)))
                n += f.shape[0] * f.shape[2] * f.shape[3] * ctx.world_size
        noise = 0.01 * torch.randn(total.shape).to(total.device)  # RNG use in a hook: resume must repeat it
        self.feature_mean.copy_(total / n + noise)
        ctx.log({"feature_mean": float(self.feature_mean.mean())})

    def extra_state(self) -> dict:
        return {"epochs_started": self.epochs_started}

    def load_extra_state(self, state: dict) -> None:
        self.epochs_started = int(state.get("epochs_started", 0))

    def input_spec(self) -> InputSpec:
        c = self.config.channels
        return InputSpec(channels=c, color_order="gray" if c == 1 else "rgb", mean=(0.5,) * c, std=(0.25,) * c,
                         stride=1)

    def eval_heads(self) -> dict[str, int]:
        return {name: head.out_channels for name, head in self.heads.items()}

    def inference_net(self, head: str = "main") -> nn.Module:
        return _ToyNet(self, head)


def toy_image(index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey image (H, W) float32 in [0, 1] with three regions, and its label map (H, W) int64 (255 border)."""
    rng = np.random.default_rng(index)
    label = np.zeros((size, size), dtype=np.int64)
    split = int(rng.integers(size // 4, 3 * size // 4))
    label[:, split:] = 1
    row = int(rng.integers(0, size - 3))
    label[row:row + 3, :] = 2
    levels = np.array([0.15, 0.85, 0.5], dtype=np.float32)
    image = levels[label] + rng.normal(0, 0.05, (size, size)).astype(np.float32)
    label[0, :] = 255
    return np.clip(image, 0, 1), label


class ToyImages(Dataset):
    """In-memory toy images. ``train``: random crops drawn from the global numpy RNG (the engine seeds it per
    sample); evaluation: whole images with labels."""

    def __init__(self, n: int = 24, size: int = 12, crop: int = 8, *, train: bool = True,
                 class_names: list[str] | None = None):
        self.items = [toy_image(i, size) for i in range(n)]
        self.size, self.crop, self.train = size, crop, train
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = self.items[index]
        if self.train:
            top, left = np.random.randint(0, self.size - self.crop + 1, size=2)
            image = image[top:top + self.crop, left:left + self.crop]
            return {"image": torch.from_numpy(image.copy())[None], "index": torch.tensor(index)}
        return {"image": torch.from_numpy(image)[None], "index": torch.tensor(index),
                "label": torch.from_numpy(label)}


@dataclass
class ScriptedConfig(ToyConfig):
    good_epochs: tuple[int, ...] = ()  # after these many completed epochs the predictions are perfect


class _Scripted(nn.Module):
    def __init__(self, good: bool):
        super().__init__()
        self.good = good

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 3, H, W)
        cluster = (x[:, 0] > 0.325).long() + (x[:, 0] > 0.675).long()  # 0 dark, 1 mid, 2 bright
        cluster = torch.tensor([0, 2, 1])[cluster] if self.good else torch.zeros_like(cluster)
        return F.one_hot(cluster, 3).permute(0, 3, 1, 2).float()


@register_method("toy_scripted")
class ToyScripted(ToySeg):
    """Trains like toy_seg; its evaluation quality follows ``good_epochs`` (for best-checkpoint tests)."""

    config_class = ScriptedConfig

    def __init__(self, config: ScriptedConfig):
        super().__init__(config)
        self.epochs_done = 0

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.epochs_done = ctx.epoch + 1

    def extra_state(self) -> dict:
        return {**super().extra_state(), "epochs_done": self.epochs_done}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.epochs_done = int(state.get("epochs_done", 0))

    def eval_heads(self) -> dict[str, int]:
        return {"main": 3}

    def inference_net(self, head: str = "main") -> nn.Module:
        return _Scripted(self.epochs_done in self.config.good_epochs)  # type: ignore[attr-defined]


class _ScriptedOver(nn.Module):
    """4 clusters: the toy image's region (0 dark, 1 bright, 2 stripe) when ``good``, else all cluster 0."""

    def __init__(self, good: bool):
        super().__init__()
        self.good = good

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 4, H, W)
        cluster = (x[:, 0] > 0.325).long() + (x[:, 0] > 0.675).long()  # 0 dark, 1 mid (stripe), 2 bright
        cluster = torch.tensor([0, 2, 1])[cluster] if self.good else torch.zeros_like(cluster)
        return F.one_hot(cluster, 4).permute(0, 3, 1, 2).float()


@register_method("toy_binary_line")
class ToyBinaryLine(ToyScripted):
    """A binary line's failure: the main head (3 clusters) predicts one cluster whatever it learns, so on a 2-class
    split its many-to-one mIoU never moves; the over-clustering head (4) is right after ``good_epochs``."""

    def eval_heads(self) -> dict[str, int]:
        return {"main": 3, "over": 4}

    def inference_net(self, head: str = "main") -> nn.Module:
        if head == "main":
            return _Scripted(False)
        return _ScriptedOver(self.epochs_done in self.config.good_epochs)  # type: ignore[attr-defined]


class BinaryToyImages(ToyImages):
    """Evaluation images with binary labels: background 0 (dark and bright), defect 1 (the stripe)."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(index)
        label = item["label"]
        item["label"] = torch.where(label == 255, label, (label == 2).long())
        return item
