"""Config file that loads a workdir's own config.json, for `--mode=eval` without `--config`.

`main` passes it as `--config=<this file>:<workdir>`, so `--config.eval.checkpoint=best` and other
overrides apply to the config the run was trained with.
"""

import ml_collections

from cifar_jax.job.workdir import load_config


def get_config(workdir: str) -> ml_collections.ConfigDict:
    return load_config(workdir)
