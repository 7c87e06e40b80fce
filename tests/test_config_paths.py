"""The one dotted-path reader and writer of config fields."""

import pytest

from cifar_jax import config_paths
from cifar_jax.errors import ConfigError
from configs import test as test_config


def test_get_reads_fields_and_tuple_elements():
    config = test_config.get_config()
    assert config_paths.get(config, "optim.learning_rate") == 0.05
    assert config_paths.get(config, "model.kernel_size[1]") == 5


@pytest.mark.parametrize("path, message", [
    ("optim", "group of fields"), ("optim.nope", "not a field"), ("model.kernel_size[7]", "no element 7"),
    ("a..b", "not a config field path")])
def test_get_refuses_what_is_not_a_value_by_name(path, message):
    with pytest.raises(ConfigError, match=message):
        config_paths.get(test_config.get_config(), path)


def test_assign_and_with_values():
    config = test_config.get_config()
    config_paths.assign(config, "model.kernel_size[0]", 3)
    assert config.model.kernel_size == (3, 5)
    changed = config_paths.with_values(config, {"optim.learning_rate": 0.2, "model.conv_features": [4, 4]})
    assert (changed.optim.learning_rate, changed.model.conv_features) == (0.2, (4, 4))  # lists become tuples
    assert config.optim.learning_rate == 0.05  # the input is untouched
    with pytest.raises(ConfigError, match="num_seeds='x' does not fit"):
        config_paths.assign(config, "num_seeds", "x")
