"""Study configs: `configs/<study>.py:get_config()` returns an ml_collections ConfigDict.

Each study config imports `configs.default` and overrides it (google/flax examples style). They
are loaded by path (`--config configs/x.py`); `configs` must be importable, which it is when
the command runs from the repository root (`python -m ...` puts the working directory on
sys.path); when a config file is loaded by path from elsewhere, it adds the repository root to
sys.path itself (the `except ImportError` branch at its top).
"""
