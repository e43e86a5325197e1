"""Dataset kinds by name: ``@register_dataset("folder")`` and ``build_dataset(spec, train=...)``.

A spec is the dict a preset holds under ``data.train`` / ``data.eval``: ``{"kind": ..., "root": ..., ...}``.
Its keys are the fields of the kind's config dataclass (``ImageDataset.config_class``); an unknown kind or key
is a :class:`~training.errors.ConfigError` that lists the valid ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from training.data.image_dataset import ImageDataset
from training.errors import ConfigError
from training.registry import Registry
from training.typed_config import config_from_dict

DATASETS: Registry[type[ImageDataset]] = Registry("dataset kind", listing="kinds", attribute="kind",
                                                  package="training.data", unknown_error=ConfigError)


def register_dataset(kind: str) -> Callable[[type[ImageDataset]], type[ImageDataset]]:
    """Class decorator: ``@register_dataset("mask_folder")``. Kinds are snake_case and unique."""
    return DATASETS.register(kind)


def dataset_kinds() -> list[str]:
    return DATASETS.names()


def get_dataset_class(kind: Any) -> type[ImageDataset]:
    return DATASETS.get(kind)


def build_dataset(spec: Mapping[str, Any], *, train: bool) -> ImageDataset:
    """Build the dataset a spec describes, for training (random crops) or evaluation (whole/centre images).

    Example: ``build_dataset({"kind": "mask_folder", "root": "samples/neu-seg", "split": "holdout"},
    train=False)``.
    """
    cls, config = dataset_config(spec, train=train)
    return cls(config, train=train)


def dataset_config(spec: Mapping[str, Any], *, train: bool) -> tuple[type[ImageDataset], Any]:
    """The dataset class and its validated config for ``spec``, without touching the files (so a preset's data
    keys are checked when the config is resolved, before any training starts)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a dataset spec must be a mapping with a 'kind' key, got {type(spec).__name__}")
    values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in spec.items()}  # Path -> str
    if "kind" not in values:
        raise ConfigError(f"dataset spec {values} has no 'kind'; valid kinds: {', '.join(dataset_kinds())}")
    cls = get_dataset_class(values.pop("kind"))
    values = {**cls.default_values(values, train=train), **values}
    try:
        config = config_from_dict(cls.config_class, values)
    except ConfigError as e:
        raise ConfigError(f"dataset kind {cls.kind!r}: {e}") from None
    return cls, config
