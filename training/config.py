"""Run configuration: YAML presets, ``--set key=value`` overrides, engine defaults, the resolved ``config.yaml``.

A config has four top-level keys (docs/ARCHITECTURE.md "Presets"; every engine key is documented in
``training/presets/README.md``)::

    method: iic                      # registry name
    method_config: {n_clusters: 4}   # fields of the method's config dataclass
    data: {train: {...}, eval: null} # training.data.build_dataset specs
    train: {epochs: 10, ...}         # engine settings, TrainConfig below

:func:`resolve_run_config` resolves a preset (or a saved config), ``--data`` roots and ``--set`` overrides once
into a typed :class:`RunConfig` (the method's config dataclass, :class:`TrainConfig`, checked dataset specs) that
``training.engine.fit`` takes; :meth:`RunConfig.to_dict` is the ``config.yaml`` written to a run directory,
explicit (every default filled) so it reproduces the run by itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training.data.image_dataset import ImageDataset
from training.data.registry import build_dataset, dataset_config, dataset_kinds, get_dataset_class
from training.errors import ConfigError
from training.methods.base import MethodConfig, config_from_dict, config_to_dict, get_method_class
from training.nets.input_adapter import migrate_legacy_keys
from usseg_sdk.atomic import write_text_atomic

PRESET_DIR = Path(__file__).resolve().parent / "presets"
TOP_LEVEL_KEYS = ("method", "method_config", "data", "train")
DATA_KEYS = ("train", "eval")


@dataclass
class TrainConfig:
    """Engine settings (the ``train:`` section). Defaults are documented in training/presets/README.md."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (even mid-epoch)
    time_budget_s: float | None = None  # stop cleanly (eval + checkpoint) once training wall-clock passes this
    batch_size: int = 16  # per process; the global batch under DDP is batch_size x world_size
    eval_batch_size: int = 1  # whole evaluation images may differ in size
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA; ignored on CPU
    amp_dtype: str = "bfloat16"  # bfloat16 (no loss scaling) | float16 (GradScaler)
    grad_clip: float | None = None  # max global L2 norm of the gradients; None = no clipping
    lr_schedule: str = "constant"  # constant | cosine (to 0 over the run's total steps)
    warmup_steps: int = 0  # linear warm-up from 0 to the method's lr
    eval_every: int = 1  # evaluate every N epochs (0: only at the end); needs data.eval
    eval_every_steps: int = 0  # also evaluate every N optimiser steps (0: off)
    eval_max_fraction: float | None = 0.25  # skip periodic evaluations while they took more of the run; null = off
    best_metric: str = "auto"  # eval score checkpoints/best maximises: auto | miou | defect_iou | over/miou | ...
    checkpoint_every_steps: int = 0  # also write checkpoints/last every N steps (0: at epoch ends only)
    log_every: int = 10  # one train line in metrics.jsonl per N steps (means over the window)
    deterministic: bool = False  # torch.use_deterministic_algorithms + no cudnn autotuning (CPU runs are anyway)
    sync_batchnorm: bool = False  # DDP on CUDA: convert BatchNorm to SyncBatchNorm
    find_unused_parameters: bool = True  # DDP: methods may leave heads unused in a step (IIC alternates heads)

    def validate(self) -> None:
        positive = ("epochs", "batch_size", "eval_batch_size", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ("num_workers", "warmup_steps", "eval_every", "eval_every_steps", "checkpoint_every_steps")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1 or null, got {self.max_steps}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"train.time_budget_s must be > 0 or null, got {self.time_budget_s}")
        if self.eval_max_fraction is not None and not 0 < self.eval_max_fraction <= 1:
            raise ConfigError(f"train.eval_max_fraction must be in (0, 1] or null, got {self.eval_max_fraction}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0 or null, got {self.grad_clip}")
        _one_of("amp_dtype", self.amp_dtype, ("bfloat16", "float16"))
        _one_of("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"train.{name} must be one of {', '.join(choices)}; got {value!r}")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; configs mean a number, as YAML 1.2 and JSON do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no Python objects


# -- presets ------------------------------------------------------------------------------------------
def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path) -> Path:
    """A preset name in ``training/presets`` or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        names = ", ".join(available_presets()) or "(none)"
        raise ConfigError(f"unknown preset {str(name_or_path)!r}; presets: {names} (or give a path to a YAML file)")
    return candidate


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return raw


def load_preset(name_or_path: str | Path) -> dict[str, Any]:
    return load_yaml(preset_path(name_or_path))


# -- overrides ----------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3). The value is parsed as YAML ("null", "[1, 2]", ...)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a dotted key (e.g. train.epochs=3), got {text!r}")
    try:
        parsed = yaml_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML: {e}") from e
    return key.split("."), parsed


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with every ``key=value`` applied (intermediate mappings are created)."""
    config = copy.deepcopy(config)
    for text in overrides:
        set_dotted(config, *parse_override(text))
    return config


def set_dotted(config: dict[str, Any], path: list[str], value: Any) -> None:
    node = config
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {'.'.join(path[:i + 1])} is {child!r}, not a mapping")
        node = child
    node[path[-1]] = value


# -- resolution ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    """One ``data.train`` / ``data.eval`` entry: the mapping as written (``spec``) and, when its kind is
    registered, the dataset class and validated config it builds, so a spec is checked once, before training."""

    spec: dict[str, Any]
    train: bool
    dataset_class: type[ImageDataset] | None = None  # None: a kind not registered when the config was resolved
    dataset_config: Any = None

    def build(self) -> ImageDataset:
        if self.dataset_class is None:  # fails here (naming the valid kinds) unless a plugin registered it since
            return build_dataset(self.spec, train=self.train)
        return self.dataset_class(self.dataset_config, train=self.train)


@dataclass(frozen=True)
class RunConfig:
    """A resolved run config: every key checked, every default filled. Built by :func:`resolve_run_config`."""

    method: str
    method_config: MethodConfig
    train: TrainConfig
    train_data: DataSpec
    eval_data: DataSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON data, as ``config.yaml`` and ``state.json`` hold it (tuples become lists)."""
        data = {"train": self.train_data.spec, "eval": None if self.eval_data is None else self.eval_data.spec}
        resolved = {"method": self.method, "method_config": config_to_dict(self.method_config), "data": data,
                    "train": dataclasses.asdict(self.train)}
        try:  # a JSON round trip, so a config read back from YAML or state.json compares equal
            return json.loads(json.dumps(resolved))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"the config holds a value that is not plain YAML/JSON data: {e}") from e


def resolve_run_config(raw: Mapping[str, Any], *, overrides: Sequence[str] = (), data: str | None = None,
                       eval_data: str | None = None, split: str | None = None,
                       eval_split: str | None = None) -> RunConfig:
    """Resolve ``raw`` (a preset, a saved config, a library caller's dict) with the ``--data`` / ``--eval-data``
    folders (and ``--split`` / ``--eval-split``, see :func:`with_data_roots`) and then the ``--set`` overrides
    applied. Unknown keys raise ConfigError listing the valid ones."""
    raw = copy.deepcopy(dict(raw))
    _set_data_roots(raw, data, eval_data, split, eval_split)
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    method = raw.get("method")
    if not isinstance(method, str) or not method:
        raise ConfigError("the config names no method (set `method:` in the preset or --set method=NAME)")
    method_cls = get_method_class(method)
    values = migrate_legacy_keys(dict(_section(raw, "method_config")), method_cls.config_class.legacy_keys,
                                 method_cls.config_class.__name__)
    method_config = _build_dataclass(method_cls.config_class, values, "method_config")
    train = _build_dataclass(TrainConfig, _section(raw, "train"), "train")
    train.validate()
    train_data, eval_data = _resolve_data(raw.get("data"))
    run = RunConfig(method=method, method_config=method_config, train=train, train_data=train_data,
                    eval_data=eval_data)
    run.to_dict()  # values that YAML cannot hold fail now, not at the first checkpoint
    return run


def resolve_config(raw: dict[str, Any]) -> dict[str, Any]:
    """``resolve_run_config(raw)`` as plain data (what ``config.yaml`` holds)."""
    return resolve_run_config(raw).to_dict()


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"`{name}` must be a mapping, got {value!r}")
    return value


def _build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    names = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(values) - set(names))
    if unknown:
        keys = ", ".join(f"{where}.{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {keys}; valid keys under {where}: {', '.join(names)}")
    try:
        return config_from_dict(cls, values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    except TypeError as e:  # a field without default left out, or a dataclass __post_init__ rejecting a value
        raise ConfigError(f"{where}: {e}") from e


def _resolve_data(data: Any) -> tuple[DataSpec, DataSpec | None]:
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"`data` must be a mapping with keys {', '.join(DATA_KEYS)}, got {data!r}")
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {[f'data.{k}' for k in unknown]}; valid keys under data: "
                          f"{', '.join(DATA_KEYS)}")
    specs = {name: _data_spec(name, data.get(name)) for name in DATA_KEYS}
    if specs["train"] is None:
        raise ConfigError("the config has no data.train dataset spec")
    return specs["train"], specs["eval"]


def _data_spec(name: str, spec: Any) -> DataSpec | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"data.{name} must be a dataset spec mapping (kind, root, ...) or null, got {spec!r}")
    train = name == "train"
    if spec.get("kind") not in dataset_kinds():  # library callers may hand fit() their own dataset objects
        return DataSpec(spec, train)
    try:  # unknown keys fail here, not minutes into a run
        cls, config = dataset_config(spec, train=train)
    except ConfigError as e:
        raise ConfigError(f"data.{name}: {e}") from None
    return DataSpec(spec, train, cls, config)


# What a preset's dataset spec keeps when --data / --eval-data replace its dataset by a plain folder: how images are
# read and cut (the preset's crop and channels), not which dataset or split they come from.
IMAGE_KEYS = ("channels", "crop", "crop_mode", "eval_crop", "scale", "short_side", "seed", "max_value")
PLAIN_CHANNELS = (1, 3)


def with_data_roots(raw: dict[str, Any], train_root: str | None, eval_root: str | None, *, split: str | None = None,
                    eval_split: str | None = None) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``--data`` / ``--eval-data`` (and ``--split`` / ``--eval-split``) applied (see
    :func:`_set_data_roots`)."""
    raw = copy.deepcopy(raw)
    _set_data_roots(raw, train_root, eval_root, split, eval_split)
    return raw


def _set_data_roots(raw: dict[str, Any], train_root: str | None, eval_root: str | None, split: str | None = None,
                    eval_split: str | None = None) -> None:
    """``--data DIR``: a plain recursive ``folder`` of frames with the preset's crop/channels (whatever dataset the
    preset names); ``--eval-data DIR``: a labelled ``mask_folder`` (DIR/images + DIR/masks, class names from
    DIR/labels.txt) with the preset's channels. A split (``--split`` / ``--eval-split``) asks for the preset's own
    dataset spec instead, as written (NEU-Seg with its split file for the ``*_neu`` presets), with that split."""
    data = raw.get("data") or {}
    raw["data"] = data
    train = data.get("train")
    if train_root is not None or split is not None:
        data["train"] = _train_spec(train, train_root, split)
    if eval_root is not None or eval_split is not None:
        data["eval"] = _eval_spec(data.get("eval"), train, eval_root, eval_split)


def _train_spec(preset: Any, root: str | None, split: str | None) -> dict[str, Any]:
    if split is not None:
        return _with_split(preset, root, split, "data.train", "--split")
    spec = {"kind": "folder", **_image_keys(preset, train=True), "root": str(root)}
    if spec.get("channels", 3) not in PLAIN_CHANNELS:
        raise ConfigError(f"--data reads a plain folder of grey or colour frames, but the preset's data.train reads "
                          f"{spec['channels']} channels (kind {preset.get('kind')!r}): to read {root} as that "
                          "dataset, give --set data.train.root=DIR instead")
    return spec


def _eval_spec(preset: Any, train: Any, root: str | None, split: str | None) -> dict[str, Any]:
    if split is not None:
        base = preset or {"kind": "mask_folder", **_channels(train)}
        return _with_split(base, root, split, "data.eval", "--eval-split")
    keys = _image_keys(preset, train=False) if preset else _channels(train)
    return {"kind": "mask_folder", **keys, "root": str(root)}


def _with_split(preset: Any, root: str | None, split: str, where: str, flag: str) -> dict[str, Any]:
    spec = dict(preset or {"kind": "mask_folder"})
    kind = spec.get("kind")
    if kind in dataset_kinds() and "split" not in {f.name for f in dataclasses.fields(
            get_dataset_class(kind).config_class)}:
        raise ConfigError(f"{flag} {split}: the preset's {where} is kind {kind!r}, which has no splits")
    if root is not None:
        spec["root"] = str(root)
    spec["split"] = split
    return spec


def _image_keys(spec: Any, *, train: bool) -> dict[str, Any]:
    """The :data:`IMAGE_KEYS` of ``spec``, with the defaults its kind derives from other keys (a protocol)."""
    if not isinstance(spec, dict):
        return {}
    values = dict(spec)
    kind = values.pop("kind", None)
    if kind in dataset_kinds():
        cls = get_dataset_class(kind)
        values = {**cls.default_values(values, train=train), **values}
    return {k: values[k] for k in IMAGE_KEYS if k in values}


def _channels(spec: Any) -> dict[str, Any]:
    return {"channels": spec["channels"]} if isinstance(spec, dict) and "channels" in spec else {}


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


def write_config(config: dict[str, Any], path: str | Path) -> Path:
    """Write the resolved config YAML atomically."""
    header = "# Resolved config of this run (every default filled in). `--preset` this file to repeat it.\n"
    return write_text_atomic(path, header + dump_config(config))
