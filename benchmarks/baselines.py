"""Baseline rows on NEU-Seg: per-pixel k-means and random-CNN + k-means, the numbers every method must beat.

Writes ``benchmarks/results/baselines.json`` (every record) and ``baselines.md`` (tables). Protocols (NEU-Seg,
4 classes background / inclusion / patches / scratches, splits from ``benchmarks/splits/neu_seg.json``):

* ``all``: centroids fitted on all 4023 images (a seeded sample of ``--fit-images`` of them, labels unused),
  all 4023 scored, the cluster -> class mapping fitted on those same images (IIC's "IID" protocol; the issue's
  headline row: k=4, Hungarian).
* ``split``: centroids fitted on ``train`` (3223 images, labels unused), ``eval`` (800, never fitted on) scored
  with the mapping fitted (a) on ``eval`` itself and (b) on ``calibration`` (40 labelled images inside ``train``)
  and applied to ``eval``.

Each record holds the main head (K = ``--k``, Hungarian) and, with ``--k-over``, an over-clustering head
(many-to-one). Runs update the JSON in place (a record is keyed by baseline, variant, protocol and seed), so
kinds and seeds can be run one at a time; the markdown is rebuilt from the whole JSON each time.

    .venv/bin/python benchmarks/baselines.py --kinds kmeans random-cnn --seeds 0 1 2 --k 4 --k-over 12 \\
        --fit-images 1000 --threads 1
    .venv/bin/python benchmarks/baselines.py --kinds kmeans --seeds 0 --max-images 40 --out-dir /tmp/bl  # smoke

The functions (:func:`neu_seg_spec`, :func:`run_record`, :func:`flat_rows`, :func:`write_results`) are meant to be
reused by the accuracy benchmark across methods.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a script, not a package: make training importable from any working directory
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.datasets import NEU_CLASSES, NEU_SPLIT_FILE, data_root  # noqa: E402
from training.cli_baseline import KINDS  # noqa: E402
from training.data import build_dataset  # noqa: E402
from training.evaluation import evaluate_baseline  # noqa: E402
from training.loaders import image_loader  # noqa: E402
from training.methods.base import build_method, config_to_dict  # noqa: E402
from training.methods.baselines import KMeansBaseline  # noqa: E402
from usseg_sdk.atomic import write_text_atomic  # noqa: E402
from usseg_sdk.metrics import segmentation_scores  # noqa: E402

log = logging.getLogger("benchmarks.baselines")

RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Protocol:
    name: str
    fit_split: str | None  # None = every image
    eval_split: str | None
    calibration_split: str | None
    description: str


PROTOCOLS = {
    "all": Protocol("all", None, None, None,
                    "fit on all 4023 images (labels unused), score all 4023, mapping fitted on the same images"),
    "split": Protocol("split", "train", "eval", "calibration",
                      "fit on train (3223, labels unused), score eval (800); mapping fitted on eval itself "
                      "(same_images) or on calibration (40 inside train) and applied to eval"),
}


def neu_seg_spec(root: Path, split: str | None, *, channels: int = 1) -> dict[str, Any]:
    """The mask_folder spec of NEU-Seg (``root`` = the data root holding ``neu-seg``), one split or every image."""
    spec: dict[str, Any] = {"kind": "mask_folder", "root": str(root / "neu-seg"), "channels": channels,
                            "class_names": list(NEU_CLASSES)}
    if split is not None:
        spec.update(split_file=str(NEU_SPLIT_FILE), split=split)
    return spec


def variant_name(method: KMeansBaseline) -> str:
    """What distinguishes this row from the headline one: k-means features, or the CNN's upsampling order."""
    c = method.config
    if method.name == "random_cnn":
        return f"upsample={c.upsample}"  # type: ignore[attr-defined]
    return c.features if c.features == "pixel" else f"{c.features}{c.patch_size}"


def run_record(kind: str, seed: int, protocol: Protocol, *, root: Path, k: int, k_over: int = 0,
               fit_images: int | None = None, max_images: int | None = None, batch_size: int = 8,
               overrides: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Fit one baseline under one protocol and score it: a JSON-friendly record."""
    method = build_method(KINDS[kind], {"n_clusters": k, "over_clusters": k_over, "seed": seed, **(overrides or {})})
    fit_set = build_dataset({**neu_seg_spec(root, protocol.fit_split), "crop": None}, train=True)
    eval_set = build_dataset(neu_seg_spec(root, protocol.eval_split), train=False)
    calib_set = (build_dataset(neu_seg_spec(root, protocol.calibration_split), train=False)
                 if protocol.calibration_split else None)
    fit_limit = min(x for x in (fit_images, max_images, len(fit_set)) if x is not None)
    eval_limit = min(max_images or len(eval_set), len(eval_set))
    result = evaluate_baseline(
        method, image_loader(fit_set, batch_size=batch_size, limit=fit_limit, seed=seed),
        image_loader(eval_set, batch_size=batch_size, limit=eval_limit),
        calibration_loader=None if calib_set is None else image_loader(calib_set, batch_size=batch_size),
        class_names=list(NEU_CLASSES), device=device)
    log.info("%s %s seed %d %s: %s", kind, variant_name(method), seed, protocol.name,
             {h: round(e["same_images"]["miou"] or math.nan, 4) for h, e in result["heads"].items()})
    return {"baseline": method.name, "variant": variant_name(method), "protocol": protocol.name, "seed": seed,
            "description": protocol.description, "config": config_to_dict(method.config),
            "fit": {"split": protocol.fit_split or "all", "images": fit_limit, "pixels": result["fit_pixels"]},
            "eval": {"split": protocol.eval_split or "all", "images": eval_limit, "pixels": result["eval_pixels"]},
            "calibration": None if calib_set is None else {"split": protocol.calibration_split,
                                                           "images": len(calib_set)},
            "kmeans_loss": result["kmeans_loss"], "heads": result["heads"]}


# -- tables -----------------------------------------------------------------------------------------------------
def flat_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per record, head and mapping source: scores as fractions, per-class IoU keyed by class."""
    rows = []
    for rec in records:
        for head, entry in rec["heads"].items():
            for mapped_on in ("same_images", "calibration"):
                s = entry.get(mapped_on)
                if s is None:
                    continue
                rows.append({"baseline": rec["baseline"], "variant": rec["variant"], "protocol": rec["protocol"],
                             "images": rec["eval"]["images"], "head": head, "k": entry["k"],
                             "matching": entry["matching"], "mapped_on": mapped_on,
                             "seed": rec["seed"], "pixel_accuracy": s["pixel_accuracy"], "miou": s["miou"],
                             "defect_iou": s["defect_iou"],
                             **{f"iou_{name}": v["iou"] for name, v in s["per_class"].items()}})
    return rows


ROW_KEY = ("baseline", "variant", "protocol", "images", "k", "matching", "mapped_on")
SCORE_COLUMNS = ("pixel_accuracy", "miou", *(f"iou_{c}" for c in NEU_CLASSES), "defect_iou")
PROTOCOL_LABELS = {
    ("all", "same_images"): "(1) all images, mapping on the same images",
    ("split", "same_images"): "(2) fit train, score eval, mapping on eval",
    ("split", "calibration"): "(3) fit train, score eval, mapping on calibration",
    ("all", "none"): "(1) all images",
    ("split", "none"): "(2, 3) eval",
}


def mean_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped over seeds: mean and (sample) standard deviation of every score, and the seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in ROW_KEY), []).append(row)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(ROW_KEY, key, strict=True))
        agg["seeds"] = sorted(r["seed"] for r in members)
        for col in SCORE_COLUMNS:
            values = [r[col] for r in members if r[col] is not None]
            agg[col] = statistics.fmean(values) if values else None
            agg[f"{col}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(agg)
    return out


def fit_sample_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """One markdown bullet per baseline variant: images and pixels k-means was fitted on."""
    seen: dict[tuple[str, str], set[tuple]] = {}
    for rec in records:
        c = rec["config"]
        seen.setdefault((rec["baseline"], rec["variant"]), set()).add(
            (rec["fit"]["images"], c["pixels_per_image"], c["kmeans_max_points"], c["kmeans_iters"]))
    lines = []
    for (baseline, variant), settings in sorted(seen.items()):
        unit = "feature-map pixels (stride 4)" if variant == "upsample=logits" else "pixels"
        text = "; ".join(f"{images} images x {ppi or 'all'} random {unit} each, k-means++ then {iters} Lloyd "
                         f"iterations on at most {cap} of them" for images, ppi, cap, iters in sorted(settings))
        lines.append(f"- `{baseline}` / `{variant}`: {text}")
    return lines


def constant_background_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scores of predicting class 0 everywhere, from the ground-truth pixel counts of each protocol's scored set."""
    rows, seen = [], set()
    for rec in records:
        key = (rec["protocol"], rec["eval"]["images"])
        if key in seen:
            continue
        seen.add(key)
        gt = np.array([v["gt_pixels"] for v in rec["heads"]["main"]["same_images"]["per_class"].values()], float)
        confusion = np.zeros((len(gt), len(gt)))
        confusion[0] = gt  # [pred, gt]: every pixel predicted as class 0
        scores = segmentation_scores(confusion, NEU_CLASSES).to_dict()
        row = {"baseline": "constant", "variant": "background", "protocol": rec["protocol"], "images": key[1],
               "k": 1, "matching": "-", "mapped_on": "none", "seeds": [],
               "pixel_accuracy": scores["pixel_accuracy"], "miou": scores["miou"], "defect_iou": scores["defect_iou"],
               **{f"iou_{name}": v["iou"] for name, v in scores["per_class"].items()}}
        rows.append(row)
    return rows


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown(records: Sequence[dict[str, Any]]) -> str:
    rows = flat_rows(records)
    commands = sorted({r.get("command", "?") for r in records}, key=lambda c: ("--fresh" not in c, c))  # fresh first
    means = sorted(mean_rows(rows), key=_order)
    seeds = sorted({r["seed"] for r in rows})
    head = ["| baseline | variant | protocol | images scored | K | matching | seeds | pixel acc | mIoU | "
            + " | ".join(f"IoU {c}" for c in NEU_CLASSES) + " | defect IoU |",
            "|" + "---|" * (10 + len(NEU_CLASSES))]
    lines = [
        "# Baselines on NEU-Seg: per-pixel k-means and random-CNN + k-means",
        "",
        "Scores in percent, mean ± sample standard deviation over the seeds listed in each row (each seed changes",
        "the pixel sample, the k-means++ seeding and, for random-cnn, the network's random weights). Written by",
        "`benchmarks/baselines.py` (run from the repository root) with:",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Protocols (NEU-Seg, 4 classes; splits `benchmarks/splits/neu_seg.json`, near-duplicates kept on one side):",
        "",
        "1. **all**: k-means fitted on all 4023 images (a seeded random sample of the images, labels unused), all "
        "4023 scored, the cluster -> class mapping fitted on the same 4023 images (IIC's \"IID\" protocol). With "
        "K = 4 and Hungarian matching this is the issue's headline row.",
        "2. **split / mapping on eval**: fitted on `train` (3223, labels unused), `eval` (800, never fitted on) "
        "scored with the mapping fitted on `eval` itself.",
        "3. **split / mapping on calibration**: same fit, the mapping fitted on `calibration` (40 labelled images "
        "inside `train`) and applied to `eval`.",
        "",
        "K = 4 rows use one-to-one Hungarian matching; K > 4 rows (over-clustering) use many-to-one matching "
        "(each cluster to its most frequent class). mIoU is the mean over the 4 classes (a class absent from "
        "both ground truth and prediction would be skipped); defect IoU is the mean over inclusion, patches, "
        "scratches.",
        "",
        "Baselines (`training/methods/baselines.py`): `kmeans` / `pixel` = k-means on each pixel's normalised grey "
        "value (the classic baseline); `kmeans` / `patch3`, `local_stats3` = variants on a 3x3 neighbourhood; "
        "`random_cnn` = PiCIE's ResNet-18 + FPN at random initialisation (\"PiCIE before training\"), L2-normalised "
        "features, `upsample=logits` = PiCIE's inference graph (clustered at stride 4, logits upsampled), "
        "`upsample=features` = features upsampled to the input resolution before normalising and clustering.",
        "",
        "Fit samples (per record; labels never used for fitting):",
        "",
        *fit_sample_lines(records),
        "",
        "## Headline: all 4023 images, K = 4, Hungarian",
        "",
        *head,
        *[_table_row(r) for r in means if r["protocol"] == "all" and r["k"] == 4 and r["matching"] == "hungarian"],
        "",
        "For reference, predicting background everywhere (no clustering at all) scores, on the same pixels:",
        "",
        *head,
        *[_table_row(r) for r in sorted(constant_background_rows(records), key=_order)],
        "",
        "Background is most of NEU-Seg's pixels, so many-to-one matching (K > 4) tends to map every cluster to "
        "background: those rows are close to the constant-background row unless some cluster is mostly defect. "
        "Hungarian matching (K = 4) must give each class one cluster, so it can score below the constant row on "
        "mIoU. A method should beat the baselines and this row on mIoU and defect IoU.",
        "",
        "## Every protocol (mean over seeds)",
        "",
        *head,
        *[_table_row(r) for r in means],
        "",
        f"## Per seed (seeds {', '.join(map(str, seeds))})",
        "",
        *head,
        *[_table_row({**r, "seeds": [r["seed"]], **{f"{c}_std": None for c in SCORE_COLUMNS}})
          for r in sorted(rows, key=lambda r: (*_order(r), r["seed"]))],
        "",
        "Fit sizes per record (images / sampled pixels) are in `baselines.json` (`fit`, `eval`, `config`).",
        "",
    ]
    return "\n".join(lines)


def _order(r: dict[str, Any]) -> tuple:
    return (r["k"], PROTOCOL_LABELS[(r["protocol"], r["mapped_on"])], r["baseline"], r["variant"] != "pixel",
            r["variant"] != "upsample=logits", r["variant"])


def _table_row(r: dict[str, Any]) -> str:
    protocol = PROTOCOL_LABELS[(r["protocol"], r["mapped_on"])]
    scores = " | ".join(_cell(r[c], r.get(f"{c}_std")) for c in SCORE_COLUMNS)
    seeds = ",".join(map(str, r["seeds"]))
    return (f"| {r['baseline']} | {r['variant']} | {protocol} | {r['images']} | {r['k']} | {r['matching']} | "
            f"{seeds} | {scores} |")


def merge_records(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every record of ``new`` replacing the one with the same baseline, variant, protocol, seed, K."""
    def key(r: dict[str, Any]) -> tuple:
        return (r["baseline"], r["variant"], r["protocol"], r["seed"], tuple(e["k"] for e in r["heads"].values()))

    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return sorted(merged.values(), key=lambda r: (r["baseline"], r["variant"], r["protocol"], r["seed"]))


def write_results(records: Sequence[dict[str, Any]], out_dir: Path, *, merge: bool = True
                  ) -> tuple[Path, Path]:
    """Write (merging into an existing file) ``baselines.json`` and rebuild ``baselines.md`` from it."""
    json_path, md_path = out_dir / "baselines.json", out_dir / "baselines.md"
    old = json.loads(json_path.read_text())["records"] if merge and json_path.is_file() else []
    records = merge_records(old, records)
    payload = {"dataset": "NEU-Seg", "classes": list(NEU_CLASSES),
               "split_file": str(NEU_SPLIT_FILE.relative_to(REPO)),
               "protocols": {p.name: p.description for p in PROTOCOLS.values()}, "records": records}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json_path, json.dumps(payload, indent=1) + "\n")
    write_text_atomic(md_path, markdown(records))
    return json_path, md_path


# -- CLI -------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", help="folder holding neu-seg/ (default $USSEG_DATA, else ../shared/data)")
    p.add_argument("--kinds", nargs="+", default=["kmeans", "random-cnn"], choices=["kmeans", "random-cnn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--k-over", type=int, default=12, help="over-clustering head K (0 = none)")
    p.add_argument("--fit-images", type=int, default=1000, help="images sampled (per seed) to fit k-means on")
    p.add_argument("--max-images", type=int, help="cap every split at this many images (smoke runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="baseline config field (YAML value), e.g. --set features=patch or --set upsample=features")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--fresh", action="store_true", help="replace the JSON instead of merging into it")
    p.add_argument("--render-only", action="store_true", help="rebuild the markdown from the JSON; run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import yaml

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    if args.render_only:
        paths = write_results([], args.out_dir)
        print(f"wrote {paths[1]}")
        return 0
    root = data_root(args.data_root)
    overrides = {}
    for text in args.overrides:
        key, _, value = text.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    command = ".venv/bin/python benchmarks/baselines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = (args.out_dir / "baselines.json", args.out_dir / "baselines.md")
    for kind in args.kinds:
        for seed in args.seeds:
            for name in args.protocols:
                record = run_record(kind, seed, PROTOCOLS[name], root=root, k=args.k, k_over=args.k_over,
                                    fit_images=args.fit_images, max_images=args.max_images,
                                    batch_size=args.batch_size, overrides=overrides, device=args.device)
                record["command"] = command
                paths = write_results([record], args.out_dir, merge=not args.fresh)
                args.fresh = False  # later records of this run merge into what it wrote
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
