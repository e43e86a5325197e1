import pytest
import yaml

import tests.training.engine.toy_methods  # noqa: F401  (registers toy_seg)
from training import config as config_mod
from training.config import (
    RunConfig,
    TrainConfig,
    apply_overrides,
    available_presets,
    load_preset,
    parse_override,
    resolve_config,
    resolve_run_config,
    with_data_roots,
    write_config,
)
from training.errors import ConfigError, UnknownMethodError
from training.methods import available_methods
from training.typed_config import config_from_dict

RAW = {"method": "toy_seg", "method_config": {"n_clusters": 4}, "data": {"train": {"kind": "folder", "root": None}},
       "train": {"epochs": 2}}


def test_resolve_fills_every_default_and_is_idempotent():
    resolved = resolve_config(RAW)
    assert resolved["method_config"]["n_clusters"] == 4
    assert resolved["method_config"]["hidden"] == 4  # ToyConfig default filled in
    assert resolved["train"]["epochs"] == 2
    assert resolved["train"]["batch_size"] == TrainConfig().batch_size
    assert resolved["data"] == {"train": {"kind": "folder", "root": None}, "eval": None}
    assert resolve_config(resolved) == resolved


def test_overrides_are_dotted_and_yaml_parsed():
    # "1e-3": PyYAML's YAML 1.1 would read a string
    raw = apply_overrides(RAW, ["train.epochs=7", "train.grad_clip=null", "method_config.lr=1e-3",
                                "data.eval.root=/x", "train.warmup_steps= 3"])
    assert raw["train"]["epochs"] == 7 and raw["train"]["grad_clip"] is None
    assert raw["method_config"]["lr"] == pytest.approx(1e-3)
    assert raw["data"]["eval"] == {"root": "/x"}  # intermediate mapping created
    assert raw["train"]["warmup_steps"] == 3
    assert RAW["train"] == {"epochs": 2}  # the input is not modified
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


@pytest.mark.parametrize("bad", ["epochs", "=3", "train..epochs=3", "train.epochs=[1"])
def test_malformed_override_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        apply_overrides(RAW, [bad])


@pytest.mark.parametrize(("override", "expected"), [
    ("train.epochz=3", "valid keys under train: amp, amp_dtype"),
    ("method_config.lamb=1", "valid keys under method_config:"),
    ("trian.epochs=3", "valid keys: method, method_config, data, train"),
    ("data.test.root=x", "valid keys under data: train, eval"),
])
def test_unknown_keys_list_the_valid_ones(override, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve_config(apply_overrides(RAW, [override]))


@pytest.mark.parametrize(("override", "expected"), [
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.amp_dtype=half", "amp_dtype must be one of bfloat16, float16"),
    ("train.batch_size=many", "expected int"),
    ("train.device=tpu", "train.device must be"),
])
def test_bad_values_are_config_errors(override, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve_config(apply_overrides(RAW, [override]))


def test_unknown_method_lists_registered_ones():
    with pytest.raises(UnknownMethodError, match="toy_seg"):
        resolve_config({**RAW, "method": "nope"})


def test_presets_by_name_and_path(tmp_path, monkeypatch):
    monkeypatch.setattr(config_mod, "PRESET_DIR", tmp_path)
    (tmp_path / "tiny.yaml").write_text("# header\n" + yaml.safe_dump(RAW))
    assert load_preset("tiny") == RAW
    assert load_preset(str(tmp_path / "tiny.yaml")) == RAW
    with pytest.raises(ConfigError, match="unknown preset 'nope'; presets: tiny"):
        load_preset("nope")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_preset("list")
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(str(tmp_path / "missing.yaml"))


def test_data_roots_and_written_config_round_trip(tmp_path):
    raw = with_data_roots({**RAW, "data": {"train": {"kind": "folder", "channels": 1}, "eval": None}},
                          "/imgs", "/labelled")
    assert raw["data"]["train"]["root"] == "/imgs"
    assert raw["data"]["eval"] == {"kind": "mask_folder", "channels": 1, "root": "/labelled"}
    resolved = resolve_config(raw)
    path = write_config(resolved, tmp_path / "config.yaml")
    assert yaml.safe_load(path.read_text()) == resolved


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_resolves_with_valid_method_engine_and_data_keys(name):
    """A preset whose data spec names keys its dataset kind does not have fails at resolution, not mid-run."""
    config = resolve_config(load_preset(name))
    assert config["method"] in available_methods()
    assert config["data"]["train"]["kind"]


def test_unknown_data_key_fails_at_resolution():
    raw = {"method": "iic", "data": {"train": {"kind": "potsdam", "root": None, "split": "eval"}}}
    with pytest.raises(ConfigError, match=r"data\.train: dataset kind 'potsdam'.*split"):
        resolve_config(raw)


@pytest.mark.parametrize("name", available_presets())
def test_the_typed_run_config_is_the_one_its_config_yaml_rebuilds(name):
    """The engine uses the typed configs built once; a run repeated from its config.yaml must build the same."""
    run = resolve_run_config(load_preset(name), overrides=["data.train.root=/imgs"], eval_data="/labelled")
    plain = run.to_dict()
    assert isinstance(run, RunConfig) and resolve_config(plain) == plain
    assert run.method_config == config_from_dict(type(run.method_config), plain["method_config"])
    assert run.train == config_from_dict(TrainConfig, plain["train"])
    again = resolve_run_config(plain)
    for typed, rebuilt in ((run.train_data, again.train_data), (run.eval_data, again.eval_data)):
        assert typed.dataset_class is not None and typed.dataset_config == rebuilt.dataset_config


def test_resolve_run_config_applies_roots_then_overrides_to_a_copy():
    raw = {**RAW, "data": {"train": {"kind": "folder", "channels": 1}, "eval": None}}
    run = resolve_run_config(raw, overrides=["train.epochs=5", "data.eval.split_file=null"], data="/imgs",
                             eval_data="/labelled")
    assert run.to_dict() == resolve_config(apply_overrides(with_data_roots(raw, "/imgs", "/labelled"),
                                                           ["train.epochs=5", "data.eval.split_file=null"]))
    assert run.train.epochs == 5 and run.train_data.spec["root"] == "/imgs"
    assert run.eval_data.spec == {"kind": "mask_folder", "channels": 1, "root": "/labelled", "split_file": None}
    assert raw["data"]["train"] == {"kind": "folder", "channels": 1} and raw["train"] == {"epochs": 2}


def test_a_spec_of_an_unregistered_kind_is_kept_and_fails_when_built():
    run = resolve_run_config({**RAW, "data": {"train": {"kind": "plugin_kind", "root": "/x"}}})
    assert run.train_data.dataset_class is None and run.to_dict()["data"]["train"] == {"kind": "plugin_kind",
                                                                                           "root": "/x"}
    with pytest.raises(ConfigError, match=r"unknown dataset kind 'plugin_kind'; valid kinds: .*folder"):
        run.train_data.build()
