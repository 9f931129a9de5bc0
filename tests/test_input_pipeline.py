"""This project's ``datasets`` and Hugging Face's ``datasets`` share a top-level name: neither may
shadow the other silently."""

import importlib.metadata
import sys
import types

import pytest

import datasets
from efficientnetv2.io.input_pipeline import input_pipeline


def test_our_input_pipeline_is_found():
    assert input_pipeline() is datasets


def test_another_datasets_package_is_refused_naming_it(monkeypatch):
    other = types.ModuleType("datasets")
    other.__file__ = "/site-packages/datasets/__init__.py"
    other.load_dataset = lambda *args: None  # Hugging Face's, say.
    monkeypatch.setitem(sys.modules, "datasets", other)
    with pytest.raises(ImportError, match=r"'datasets' imported from /site-packages/datasets/__init__.py is "
                                          r"not EfficientNetV2's input pipeline \(Hugging Face's"):
        input_pipeline()


def test_an_installed_hugging_face_datasets_is_warned_about():
    class HuggingFace:
        version = "2.19.0"

    def installed(name):
        if name == "datasets":
            return HuggingFace()
        raise importlib.metadata.PackageNotFoundError(name)

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    with pytest.warns(UserWarning, match=r"Hugging Face's 'datasets' 2.19.0 installed.*one shadows the other"):
        assert datasets.check_name_clash(installed)
    assert datasets.check_name_clash(absent) is None
