"""Every shipped config passes every static check, finds its data the way a user's checkout does,
and the model-field defaults the models compare against are configs/default.py's."""

import importlib
import os
from pathlib import Path

import pytest

from cifar_jax.data import catalog as data
from cifar_jax.experiments import study, sweep
from cifar_jax.job import validation
from cifar_jax.models import common
from configs import default, fashion_mnist

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def shipped_configs() -> list[tuple[str, tuple[str, ...]]]:
    """(module, config argument) of every config file, each study at each scale."""
    out = []
    for path in sorted(CONFIGS.rglob("*.py")):
        module = ".".join(path.relative_to(CONFIGS.parent).with_suffix("").parts)
        if "def get_config" not in path.read_text():  # helpers: sweep_spec, shared_data
            continue
        if module == "configs.fashion_mnist":
            out += [(module, (arch,)) for arch in fashion_mnist.ARCHS]
        elif module.startswith("configs.studies."):
            out += [(module, (scale,)) for scale in ("full", "cpu", "smoke")]
        else:
            out.append((module, ()))
    return out


@pytest.mark.parametrize("module, args", shipped_configs(), ids=lambda v: v if isinstance(v, str) else ":".join(v))
def test_shipped_config_passes_every_static_check(module, args):
    config = importlib.import_module(module).get_config(*args)
    if config.get("experiments"):
        study.validate(config)
    elif config.get("sweep"):
        for group in sweep.expand(config):
            study.check_group(group)
    else:
        name = data.check_name(config.data.name)
        validation.validate_config(config, data.IMAGE_SHAPES[name], len(data.CLASS_NAMES[name]), 1000)


@pytest.mark.parametrize("module", [m for m, args in shipped_configs() if m.startswith("configs.studies.")][::3])
def test_study_configs_read_data_from_tfds_or_an_existing_directory(module):
    """A study's data.dir is '' (TFDS, or --config.data.dir) or a directory that exists: never a
    path this checkout lacks (an explicit data.dir never falls back to TFDS)."""
    for scale in ("full", "cpu", "smoke"):
        data_dir = importlib.import_module(module).get_config(scale).data.dir
        assert data_dir == "" or os.path.isdir(data_dir), (module, scale, data_dir)


def test_model_field_defaults_are_the_default_configs():
    model = default.get_config().model
    assert {name: model[name] for name in common.CNN_FIELD_DEFAULTS} == common.CNN_FIELD_DEFAULTS
