"""Datasets (``build_dataset(spec, train=...)``, one module per kind) and batched view transforms.

Kinds register themselves with ``@register_dataset``; each reader module is imported here.
"""

from training.data import cocostuff, folder, mask_folder, potsdam, severstal  # noqa: F401  (registers the kinds)
from training.data.image_dataset import DatasetConfig, ImageDataset
from training.data.registry import build_dataset, dataset_kinds, get_dataset_class, register_dataset

__all__ = ["DatasetConfig", "ImageDataset", "build_dataset", "dataset_kinds", "get_dataset_class", "register_dataset"]
