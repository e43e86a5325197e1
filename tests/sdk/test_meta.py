import json

import pytest

from usseg_sdk.errors import ModelMetaError
from usseg_sdk.meta import (
    METADATA_KEY,
    SCHEMA_VERSION,
    ClassInfo,
    InputSpec,
    MappingInfo,
    ModelMeta,
    TilingSpec,
    default_palette,
)


def grey_input(**kw):
    return InputSpec(channels=1, color_order="gray", mean=(0.5,), std=(0.25,), stride=4, native_size=(128, 128), **kw)


def calibrated_meta():
    classes = [ClassInfo(name="background", color=(40, 40, 40), defect=False),
               ClassInfo(name="inclusion", color=(230, 25, 75)),
               ClassInfo(name="patches", color=(60, 180, 75)),
               ClassInfo(name="scratches", color=(255, 225, 25))]
    return ModelMeta(method="picie", n_clusters=6, classes=classes, cluster_to_class=[0, 0, 1, 2, 3, 0],
                     mapping=MappingInfo(kind="many_to_one", n_images=4, metrics={"miou": 0.41}),
                     input=grey_input(), tiling=TilingSpec(tile_size=(256, 512), overlap=32),
                     versions={"torch": "2.13.0"})


def test_json_round_trip(tmp_path):
    meta = calibrated_meta()
    path = meta.save(tmp_path / "model.json")
    back = ModelMeta.load(path)
    assert back == meta
    assert back.cluster_to_class == [0, 0, 1, 2, 3, 0]
    assert back.n_classes == 4 and back.class_names[3] == "scratches"
    assert not list(tmp_path.glob(".*tmp")), "atomic write left a temp file"


def test_onnx_metadata_props_round_trip(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    meta = calibrated_meta()
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    for k, v in meta.to_metadata_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, tmp_path / "m.onnx")
    loaded = onnx.load(tmp_path / "m.onnx")
    props = {p.key: p.value for p in loaded.metadata_props}
    assert ModelMeta.from_metadata_props(props) == meta
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert ModelMeta.from_metadata_props(sess.get_modelmeta().custom_metadata_map) == meta


def test_newer_schema_version_is_refused():
    raw = json.loads(calibrated_meta().to_json())
    raw["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ModelMetaError, match="newer than this usseg-sdk"):
        ModelMeta.from_json(json.dumps(raw))


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(cluster_to_class=[0, 1]), "cluster_to_class has 2 entries"),
    (lambda r: r.update(cluster_to_class=[0, 0, 1, 2, 9, 0]), "refers to classes"),
    (lambda r: r["input"].update(mean=[0.1, 0.2]), "mean needs 1 values"),
    (lambda r: r["input"].update(color_order="rgb"), "color_order 'rgb' has 3 channels"),
    (lambda r: r["input"].update(std=[0.0]), "std must be positive"),
    (lambda r: r.update(n_clusters="six"), "n_clusters"),
    (lambda r: r.update(surprise=1), "surprise"),
    (lambda r: r.pop("schema_version"), "no integer schema_version"),
    (lambda r: r["tiling"].update(overlap=200), "overlap 200 must be less than half"),
    (lambda r: r["classes"][1].update(color=[300, 0, 0]), "colour components"),
])
def test_malformed_field_is_a_clear_error(mutate, message):
    raw = json.loads(calibrated_meta().to_json())
    mutate(raw)
    with pytest.raises(ModelMetaError, match=message):
        ModelMeta.from_json(json.dumps(raw))


def test_not_json_and_missing_key():
    with pytest.raises(ModelMetaError, match="not valid JSON"):
        ModelMeta.from_json("{nope")
    with pytest.raises(ModelMetaError, match=f"no '{METADATA_KEY}' entry"):
        ModelMeta.from_metadata_props({"producer": "someone else"})
    with pytest.raises(ModelMetaError, match="cannot read"):
        ModelMeta.load("/nonexistent/model.json")


def test_uncalibrated_is_identity_with_distinct_colours():
    meta = ModelMeta.uncalibrated(method="iic", n_clusters=45, input=grey_input())
    assert meta.cluster_to_class == list(range(45))
    assert meta.mapping.kind == "identity"
    assert len(set(default_palette(45))) == 45
    assert not meta.classes[0].defect and meta.classes[1].defect


def test_atomic_writes_get_the_umask_permissions(tmp_path):
    import os
    import stat

    from usseg_sdk.atomic import write_text_atomic

    umask = os.umask(0o022)
    os.umask(umask)
    path = write_text_atomic(tmp_path / "model.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
