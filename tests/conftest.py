"""Suite-wide setup: the persistent compilation cache, and the `slow` marker for end-to-end tests.

Every test builds programs through fresh closures, so `jax.jit`'s in-memory cache never hits
across tests; the persistent cache does whenever two tests compile the same HLO (the same tiny
model under another learning rate, a repeated run), as the CLI subprocesses already do.
"""

import pytest

from cifar_jax.core import execution


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end tests that train through the CLI (deselect: -m 'not slow')")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache() -> str | None:
    return execution.enable_compilation_cache()
