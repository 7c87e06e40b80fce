"""`config.sweep` with every field a sweep reads, so each can be overridden on the command line."""

import ml_collections


def sweep_spec(kind: str, axes: tuple, **options) -> ml_collections.ConfigDict:
    """A sweep over `axes` ((field, values), ...): kind grid | zip | one_factor; `options` override
    the defaults below."""
    spec = ml_collections.ConfigDict({
        "kind": kind,
        "axes": axes,
        "constraints": (),  # expressions over swept fields, e.g. "model.conv_features[0] <= model.conv_features[1]"
        "metric": "val_accuracy",  # what one_factor picks by and the report ranks by
        "alpha": 0.05,  # significance level of the "not different from the best" marks
        "labels": (),  # display names, one per setting (zip)
        # Several workers on one workdir (SLURM arrays): -1 / 0 take SLURM_ARRAY_TASK_ID / _COUNT,
        # else worker 0 of 1.
        "worker_index": -1,
        "num_workers": 0,
    })
    spec.update(options)
    return spec
