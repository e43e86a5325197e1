"""Accuracy of every method and baseline on a dataset: train without labels for a fixed number of steps, then score.

For each row (a method preset ``training/presets/<row>_neu.yaml``, or a baseline: ``kmeans``, ``random_cnn``) and
each seed, on ``--dataset`` (``benchmarks/datasets.py``):

* ``neu`` (default): NEU-Seg (``$USSEG_DATA/neu-seg``; splits from ``benchmarks/splits/neu_seg.json``,
  near-duplicate groups kept on one side). The numbers below are NEU-Seg's.
* ``crackforest``: CrackForest (``$USSEG_DATA/crackforest``), converted once into a mask folder under
  ``<runs-dir>/cache`` (``benchmarks/crackforest.py``: Segmentation 1 -> background, 2/3/4 -> crack); split
  ``benchmarks/splits/crackforest.json``: training on all 155 frames without labels, 6 labelled frames (5 %) as
  calibration, the other 112 labelled frames scored. The NEU-Seg presets run unchanged and nothing was tuned on it
  (no tuning subset); with 2 classes a 4-cluster main head has no protocol (a).

* Training: the engine (``training.engine.fit``) on the 3223 ``train`` images, labels unused, for the row's step
  budget (``ROW_STEPS`` in ``rows.py``, about 600 s on a quiet 2-core machine here; ``--budget-steps``;
  ``train.max_steps``): the same work on any machine, so the scores do not depend on its load. ``--cap-s`` (default
  1800 s of training wall-clock, ``train.time_budget_s``; evaluation and checkpoint writing do not count) is only a
  safety cap: a run it stops has ``training.cap_hit`` true in its JSON and is counted in the tables' ``cap hit``
  column. Every run records its steps, training seconds and images seen. The engine evaluates the 40-image labelled
  ``calibration`` split (inside ``train``) every epoch and every ``train.eval_every_steps`` steps: those are the
  per-epoch curves, and its best main-head mIoU picks the ``best`` checkpoint. The ``eval`` split is never trained
  on and no run's choice (checkpoint, mapping) looks at it. The presets were tuned looking at a fixed subset of it
  (``--tuning-subset``, 200 images; benchmarks/results/accuracy_neu_tuning.md), so every score is also given for the
  other eval images alone (``untouched``). Baselines fit their k-means once on ``--baseline-fit-images`` train
  images (their fit time is their training time).
* Scoring (``scoring.py``), of the ``final`` weights and of the ``best``-by-calibration checkpoint, on the ``eval``
  split (800 images, or the fixed subset ``--eval-limit``: a seed-0 permutation of the sorted eval ids, the subset
  ``benchmarks/baselines.py`` uses), under protocols (a) Hungarian on the eval images, (b) mapping fitted on the
  calibration images, (c) the mIoU-fitted mapping of the calibration images. Each head is also scored with the
  other mapping source (``same_images`` / ``calibration``) in the JSON.
* A checkpoint taken in the middle of an epoch (a budget stop) first gets that epoch closed with the method's
  ``on_epoch_end`` over the training images (PiCIE refits its inference centroids there); the time it takes counts
  as training time.

Modules: ``rows`` (which presets, their training subsets), ``settings`` (what makes runs comparable), ``data``
(splits, subsets, loaders), ``runner`` (one resumable run -> its JSON), ``records`` (the per-run files),
``scoring`` (protocols), ``report`` (aggregation, markdown), ``figures``, ``tuning`` (the tuning log), ``cli``.

Files, under ``--out`` (default ``benchmarks/results``; ``accuracy_<dataset>``, shown for NEU-Seg)::

    accuracy_neu.json / .md        every run and the mean / std over seeds per row, the tables
    accuracy_neu.png               mIoU and defect IoU per row, protocols (a) and (b), seed std as error bars
    accuracy_neu_overlays.png      a few eval frames x [image, ground truth, each row's protocol-(b) labels]
    accuracy_neu_curves.png        calibration mIoU against training time, per row (seed 0)
    accuracy_neu_runs/<row>_seed<k>.json      one per run: the unit of resumption (an existing file is skipped)
    accuracy_neu_runs/<row>_seed<k>_frames.npz   that run's predicted labels on the overlay frames

Run directories (checkpoints, ``metrics.jsonl``; not committed) and the converted-dataset cache go to ``--runs-dir``
(default ``runs/accuracy_<dataset>``); an interrupted training resumes from its last checkpoint (the budget spans
resumes).
From the repository root (``python benchmarks/accuracy ...`` runs the same)::

    .venv/bin/python -m benchmarks.accuracy --methods iic picie infoseg ac kmeans random_cnn --seeds 0 1 2 \\
        --threads 1
    .venv/bin/python -m benchmarks.accuracy --methods iic kmeans --seeds 0 --budget-steps 20 \\
        --data-root samples/neu-seg --split-file samples/neu-seg/splits.json --eval-split holdout \\
        --out /tmp/acc --runs-dir /tmp/acc/runs                         # smoke run on the bundled sample
    .venv/bin/python -m benchmarks.accuracy --dataset crackforest --methods iic kmeans --seeds 0 1 2
    .venv/bin/python -m benchmarks.accuracy --report-only          # rebuild tables and figures from the JSONs

The wall-clock budget of the runs before the step budgets (``--budget-s S``, as in the tuning log) is
``--budget-steps 0 --cap-s S``; their run JSONs (``settings.budget_s``) are not mixed with step-budget runs.
"""

from __future__ import annotations

from benchmarks.accuracy.data import eval_parts, eval_subset
from benchmarks.accuracy.report import aggregate, write_reports
from benchmarks.accuracy.runner import method_config, run_one
from benchmarks.accuracy.scoring import protocols, score_heads
from benchmarks.accuracy.settings import Settings

__all__ = ["Settings", "aggregate", "eval_parts", "eval_subset", "method_config", "protocols", "run_one",
           "score_heads", "write_reports"]
