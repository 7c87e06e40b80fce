"""Quiet start: no TensorFlow, absl C++, oneDNN, gRPC, CUDA-probe or TFDS chatter on the console.

None of those lines is about the user's run. The C++ loggers read the environment once, when their
library loads, so `cifar_jax.main` calls `configure` before anything imports jax or TensorFlow.
absl's `--verbosity=1` (or `-v 1`) or higher keeps everything, for debugging an installation.
Importing this module changes nothing: a notebook that imports cifar_jax keeps its own settings.
"""

import logging
import os
import re

from cifar_jax.data import tfds_source

# Set only where the user has not set them: an explicit environment always wins.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow C++ INFO/WARNING: CPU-feature and CUDA-probe lines
    # The "oneDNN custom operations are on" line (TensorFlow reads data and writes TensorBoard
    # here; it never trains, so its oneDNN kernels do not matter).
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",  # absl/glog C++ logging in XLA and TensorFlow
}
# Python loggers of libraries whose warnings are about themselves (deprecations, missing GPUs), and
# asyncio's "Future exception was never retrieved" dumps of Orbax's reads of a damaged checkpoint
# (reported once, in one line, by cifar_jax.job.checkpoint).
QUIET_LOGGERS = {"tensorflow": logging.ERROR, "absl": logging.ERROR, "jax._src.xla_bridge": logging.ERROR,
                 "asyncio": logging.CRITICAL}
VERBOSE_LEVEL = 1

active = False  # whether `configure` silenced the libraries (read by data.tfds_source for TFDS's bars)


def requested_verbosity(argv: list[str]) -> int:
    """The value of absl's --verbosity / -v in `argv`, or -1 (absl's default) when absent."""
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"(?:--verbosity|-v)(?:=?(-?\d+))?", arg)
        if match:
            value = match.group(1) or (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                return int(value)
            except ValueError:
                return -1  # absl reports the malformed value itself
    return -1


def configure(argv: list[str]) -> bool:
    """Silences the libraries unless `argv` asks for --verbosity >= 1; returns whether it did."""
    global active
    if requested_verbosity(argv) >= VERBOSE_LEVEL:
        return False
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    tfds_source.tfds_progress_bars = False  # redrawn for minutes on a download
    active = True
    return True
