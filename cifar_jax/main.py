"""Command-line entry point: `python -m cifar_jax.main --config configs/x.py --workdir DIR`.

Only parses flags and dispatches; errors the user can fix are printed as one line.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cifar_jax import train
from cifar_jax.errors import CifarJaxError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); override fields with --config.a.b=v.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train"], "What to do.")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
        if FLAGS.config is None:
            raise CifarJaxError("--config is required for --mode=train; e.g. --config configs/test.py")
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except CifarJaxError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
