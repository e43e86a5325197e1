"""Moved: the ``baseline`` CLI is ``training/cli_baseline.py``, its scoring ``training/evaluation.py``
(``score_protocols``, ``evaluate_baseline``), its whole-image loader ``training/loaders.py`` (``image_loader``,
``collate_same_size``). These names stay importable from here until the scripts that use them move on."""

from training.cli_baseline import KINDS
from training.evaluation import evaluate_baseline, score_protocols
from training.loaders import collate_same_size, image_loader

__all__ = ["KINDS", "collate_same_size", "evaluate_baseline", "image_loader", "score_protocols"]
