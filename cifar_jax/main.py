"""Command-line entry point: `python -m cifar_jax.main --config configs/x.py --workdir DIR [--mode ...]`.

Only parses flags and dispatches; errors the user can fix are printed as one line.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cifar_jax import evaluation, execution, sweep, train, workdir_config
from cifar_jax.errors import CifarJaxError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:arg]); override fields with --config.a.b=v. With --mode=eval "
    "it defaults to the workdir's own config.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sweep"],
                  "train (or resume); eval a checkpoint of --workdir; sweep the config's `sweep` spec.")
flags.mark_flags_as_required(["workdir"])


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def with_workdir_config(argv: list[str]) -> list[str]:
    """For `--mode=eval` without `--config`, reads the config the workdir was trained with."""
    workdir = _flag_value(argv, "workdir")
    if _flag_value(argv, "mode") != "eval" or _flag_value(argv, "config") is not None or workdir is None:
        return argv
    return [argv[0], f"--config={workdir_config.__file__}:{workdir}", *argv[1:]]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
        if FLAGS.config is None:
            raise CifarJaxError(f"--config is required for --mode={FLAGS.mode}; e.g. --config configs/test.py")
        execution.initialize_distributed(FLAGS.config)
        execution.enable_compilation_cache(FLAGS.workdir)
        if FLAGS.mode == "train":
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        elif FLAGS.mode == "sweep":
            sweep.run_sweep(FLAGS.config, FLAGS.workdir)
        else:
            evaluation.run_eval(FLAGS.config, FLAGS.workdir)
    except CifarJaxError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or config file ends in one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        cause = lines[-1].split(": ", 1)[-1] if "Traceback" in str(error) else lines[0]
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError) as error:  # ml_collections: an override of a missing field
        print(f"error: a --config.* override names no config field ({error}); the fields are in "
              "configs/default.py and the study config", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    """Console entry point; also what `python -m cifar_jax.main` runs."""
    app.run(main, argv=with_workdir_config(sys.argv), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
