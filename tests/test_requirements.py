"""The declared Keras floor: setup.cfg, the import check and its message."""

import configparser
import importlib
import os
import re

import keras
import pytest

import keras_vib
from keras_vib import _requirements

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR = _requirements.MIN_KERAS_VERSION


def _setup_cfg_requirements():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    lines = config["options"]["install_requires"].split("\n")
    return [line.strip() for line in lines if line.strip()]


def test_setup_cfg_declares_the_checked_floor():
    assert f"keras>={FLOOR}" in _setup_cfg_requirements()


def test_the_running_keras_is_supported():
    _requirements.check_keras_version(keras.__version__)


@pytest.mark.parametrize("version", ["3.0.0", "3.8.0", "3.10.0", "3.14.0"])
def test_older_keras_is_refused_with_the_needed_version(version):
    expected = re.escape(f"keras_vib needs Keras >= {FLOOR}. Found Keras ")
    with pytest.raises(ImportError, match=expected + re.escape(version)):
        _requirements.check_keras_version(version)


@pytest.mark.parametrize(
    "version", [FLOOR, "3.15.1", "3.16.0.dev2026010203", "4.0"]
)
def test_the_floor_and_newer_are_accepted(version):
    _requirements.check_keras_version(version)


def test_importing_keras_vib_on_an_old_keras_fails_clearly(monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.8.0")
    with pytest.raises(ImportError, match=f"needs Keras >= {FLOOR}"):
        importlib.reload(keras_vib)
    monkeypatch.undo()
    importlib.reload(keras_vib)
    assert keras_vib.layers.VIB is not None
