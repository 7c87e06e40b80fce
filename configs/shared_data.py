"""The project's shared copy of a data set, `../shared/data/<name>` beside the checkout, used only
where it exists: everyone else reads the data the way every config does (TFDS, or
--config.data.dir)."""

import pathlib

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_copy(name: str) -> str:
    """The shared copy's directory, or '' (TFDS) where this checkout has none beside it."""
    path = SHARED_DATA / name
    return str(path) if path.is_dir() else ""
