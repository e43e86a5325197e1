"""The generic Registry and the two registries built on it (methods, dataset kinds)."""

import pytest

from training.data import get_dataset_class, register_dataset
from training.data.folder import FolderDataset
from training.errors import ConfigError, UnknownMethodError
from training.methods import Method, available_methods, build_method, get_method_class, register_method
from training.methods.iic import IIC
from training.registry import Registry


class Base:
    label = ""


def test_register_names_the_class_and_lists_sorted_names():
    registry = Registry("widget", listing="names", attribute="label", package="training.registry",
                        unknown_error=LookupError)
    for name in ("zeta", "alpha"):
        registry.register(name)(type(name.title(), (Base,), {}))
    assert registry.names() == ["alpha", "zeta"]
    assert registry.get("alpha").label == "alpha"
    same = registry.get("zeta")
    assert registry.register("zeta")(same) is same  # re-registering the same class (a re-import) is fine
    with pytest.raises(ValueError, match="widget 'zeta' is already registered by Zeta"):
        registry.register("zeta")(type("Other", (Base,), {}))
    with pytest.raises(LookupError, match="unknown widget 'beta'; valid names: alpha, zeta"):
        registry.get("beta")


def test_an_empty_registry_says_so():
    registry = Registry("widget", listing="names", attribute="label", package="training.registry",
                        unknown_error=LookupError)
    with pytest.raises(LookupError, match=r"valid names: \(none\)"):
        registry.get("x")


def test_method_registry_errors_list_the_valid_names():
    assert {"ac", "anomaly", "iic", "infoseg", "kmeans", "picie", "random_cnn"} <= set(available_methods())
    assert get_method_class("iic") is IIC and IIC.name == "iic"
    with pytest.raises(UnknownMethodError, match="unknown method 'iic2'; valid names: ac, anomaly, iic, infoseg"):
        build_method("iic2")
    with pytest.raises(ValueError, match="method 'iic' is already registered by IIC"):
        register_method("iic")(type("NotIIC", (Method,), {}))


def test_dataset_registry_errors_list_the_valid_kinds():
    assert get_dataset_class("folder") is FolderDataset and FolderDataset.kind == "folder"
    with pytest.raises(ConfigError, match="unknown dataset kind 'foldr'; valid kinds: cocostuff, folder, mask_folder"):
        get_dataset_class("foldr")
    with pytest.raises(ValueError, match="dataset kind 'folder' is already registered by FolderDataset"):
        register_dataset("folder")(type("Other", (FolderDataset,), {}))
