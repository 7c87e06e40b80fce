"""Records: macro-F1 by sklearn's rule, the best epoch by checkpoint.best_metric, results.json."""

import numpy as np
import pytest

from cifar_jax.core import metrics
from cifar_jax.job import results
from cifar_jax.core import runs
from helpers import tiny_config


def confusion_of(y_true, y_pred, num_classes=3):
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (y_true, y_pred), 1)
    return confusion


def test_macro_f1_follows_sklearns_present_classes_rule():
    # Class 2 is predicted once but never true: sklearn averages F1 over {0, 1, 2} (2/3, 1, 0).
    confusion = confusion_of([0, 0, 1], [0, 2, 1])
    out = metrics.classification_metrics(confusion[None], np.array([3.0]))
    assert out["macro_f1"][0] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert out["accuracy"][0] == pytest.approx(2 / 3)
    np.testing.assert_allclose(out["per_class_accuracy"][0], [0.5, 1.0, np.nan])
    assert out["loss"][0] == pytest.approx(1.0)
    # A class in neither labels nor predictions is left out of the average.
    perfect = metrics.classification_metrics(confusion_of([0, 1], [0, 1])[None], np.array([0.0]))
    assert perfect["macro_f1"][0] == pytest.approx(1.0)


def test_best_epoch_honours_the_checkpoint_metric():
    curves = {"val_accuracy": np.array([[0.5, 0.2], [0.7, 0.3], [0.6, np.nan]]),
              "val_loss": np.array([[1.0, 2.0], [0.9, 1.5], [0.8, np.nan]])}
    by_accuracy = results.best_epoch_metrics(curves, "val_accuracy")
    np.testing.assert_array_equal(by_accuracy["best_epoch"], [2, 2])  # NaN epochs never win
    np.testing.assert_allclose(by_accuracy["best_val_loss"], [0.9, 1.5])
    by_loss = results.best_epoch_metrics(curves, "val_loss")
    np.testing.assert_array_equal(by_loss["best_epoch"], [3, 2])
    np.testing.assert_allclose(by_loss["best_val_accuracy"], [0.6, 0.3])


def test_results_json_uses_the_checkpoint_metric_and_summarizes_per_setting():
    config = tiny_config(num_seeds=2)
    config.hparam_grid.learning_rate = (0.1, 0.2)
    config.checkpoint.best_metric = "val_loss"
    grid = runs.make_run_grid(config, 1)
    history = [{"val_accuracy": [0.5, 0.6, 0.1, 0.2], "val_loss": [1.0, 1.0, 2.0, 2.0]},
               {"val_accuracy": [0.4, 0.7, 0.3, 0.4], "val_loss": [0.5, 1.5, 1.0, 3.0]}]
    summary = results.summarize_results(config, grid, history, np.zeros(4, bool), wall_time_s=1.0)
    assert [run["best_epoch"] for run in summary["runs"]] == [2, 1, 2, 1]
    assert summary["best_metric"] == "val_loss"
    by_setting = summary["summary"]["val_accuracy"]
    assert [s["n"] for s in by_setting] == [2, 2]
    assert by_setting[0]["mean"] == pytest.approx(0.55) and by_setting[1]["mean"] == pytest.approx(0.35)
