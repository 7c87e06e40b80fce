"""Study configs: `configs/<study>.py:get_config()` returns an ml_collections ConfigDict.

Each study config imports `configs.default` and overrides it (google/flax examples style). They
are loaded by path (`--config configs/x.py`) and import their siblings as `configs.*`: the entry
point puts the directory holding this package on sys.path (`main.config_package_on_path`), so
that works from any working directory.
"""
