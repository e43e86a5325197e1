"""Which metadata a model runs with: ``model.json`` beside it wins over the copy embedded in the ONNX file, a broken
sidecar is an error naming it (never a silent fallback), and a disagreement is logged naming both files."""

from __future__ import annotations

import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from usseg_sdk import ModelLoadError, Segmenter, SegmenterConfig
from usseg_sdk.cli import main

CPU = SegmenterConfig(device="cpu")


@pytest.fixture
def export_dir(models, tmp_path):
    """A copy of the grey model's export folder (4 clusters -> [0, 1, 1, 2], scores), embedded meta + model.json."""
    folder = tmp_path / "export"
    shutil.copytree(models["grey"].parent, folder)
    return folder


def _edit(folder, change) -> None:
    raw = json.loads((folder / "model.json").read_text())
    change(raw)
    (folder / "model.json").write_text(json.dumps(raw))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_renamed_class_in_model_json_is_used_and_the_disagreement_logged(export_dir, caplog):
    _edit(export_dir, lambda raw: raw["classes"][1].update(name="scratch"))
    with caplog.at_level(logging.INFO, logger="usseg_sdk"):
        seg = Segmenter(export_dir, config=CPU)
    assert seg.class_names == ["background", "scratch", "defect_2"]
    assert seg.meta_source.kind == "sidecar" and seg.meta_source.path == export_dir / "model.json"
    assert seg.meta_source.differences == ("classes[1].name",)
    (message,) = _warnings(caplog)
    assert "model.json" in message and "model.onnx" in message and "classes[1].name" in message


def test_a_colour_edit_is_used_without_a_warning(export_dir, caplog):
    _edit(export_dir, lambda raw: raw["classes"][2].update(color=[1, 2, 3]))
    with caplog.at_level(logging.INFO, logger="usseg_sdk"):
        seg = Segmenter(export_dir, config=CPU)
    assert seg.meta.classes[2].color == (1, 2, 3) and not _warnings(caplog)


def test_an_edited_mapping_is_applied_by_the_runtime(export_dir, caplog):
    """The graph's labels follow the embedded mapping; the sidecar's is honoured by mapping clusters itself."""
    _edit(export_dir, lambda raw: raw.update(cluster_to_class=[0, 2, 1, 1]))
    with caplog.at_level(logging.WARNING, logger="usseg_sdk"):
        seg = Segmenter(export_dir, config=CPU)
    res = seg.predict(np.random.default_rng(0).integers(0, 256, (24, 40), dtype=np.uint8))
    np.testing.assert_array_equal(res.labels, np.asarray([0, 2, 1, 1], np.uint8)[res.clusters])
    assert res.scores is None  # the graph's scores follow the embedded classes
    assert any("cluster_to_class" in m and "scores" in m for m in _warnings(caplog))


@pytest.mark.parametrize("text, match", [
    ("{not json", r"model\.json is not valid JSON"),
    (None, r"model\.json uses metadata schema version 99.*upgrade usseg-sdk"),
    ('{"schema_version": 1, "method": "x"}', r"model\.json is malformed"),
])
def test_a_broken_model_json_is_an_error_naming_it(export_dir, text, match):
    if text is None:
        _edit(export_dir, lambda raw: raw.update(schema_version=99))
    else:
        (export_dir / "model.json").write_text(text)
    with pytest.raises(ModelLoadError, match=match):
        Segmenter(export_dir, config=CPU)


def test_a_sidecar_of_another_graph_is_an_error_naming_both(export_dir):
    _edit(export_dir, lambda raw: raw.update(n_clusters=5, cluster_to_class=[0, 1, 1, 2, 2]))
    with pytest.raises(ModelLoadError, match=r"model\.json.*model\.onnx.*n_clusters"):
        Segmenter(export_dir, config=CPU)


def test_a_lone_onnx_file_uses_its_embedded_copy(models, tmp_path):
    shutil.copy(models["grey"], tmp_path / "model.onnx")
    seg = Segmenter(tmp_path / "model.onnx", config=CPU)
    assert seg.meta_source.kind == "embedded" and seg.meta_source.path == tmp_path / "model.onnx"


def test_info_says_which_it_read(export_dir, capsys):
    _edit(export_dir, lambda raw: raw["classes"][1].update(name="scratch"))
    assert main(["info", str(export_dir), "--json"]) == 0
    source = json.loads(capsys.readouterr().out)["meta_source"]
    assert source == {"kind": "sidecar", "path": str(export_dir / "model.json"),
                      "embedded": str(export_dir / "model.onnx"), "differences": ["classes[1].name"]}
    assert main(["info", str(export_dir)]) == 0
    out = capsys.readouterr().out
    assert f"metadata   {export_dir / 'model.json'} (sidecar; differs from the embedded copy in classes[1].name)" in out


def test_calibrating_a_model_with_an_edited_mapping_keeps_the_graph_outputs(export_dir, tmp_path, capsys):
    _edit(export_dir, lambda raw: raw.update(cluster_to_class=[0, 2, 1, 1]))
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    frame = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "images" / "a.png"), frame)
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), (frame > 128).astype(np.uint8))
    assert main(["calibrate", "-m", str(export_dir), "--images", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), "--out", str(tmp_path / "cal"), "--device", "cpu"]) == 0
    capsys.readouterr()
    new = Segmenter(tmp_path / "cal", config=CPU)
    assert new.meta.outputs.labels == "labels" and new.meta.outputs.scores == "scores"
    assert new.meta_source.differences == ()
