"""Suite-wide setup: the persistent compilation cache, the `slow` marker for end-to-end tests, and
no silent skips: without the Fashion-MNIST files CI fails at once, anywhere else the summary says
which tests did not run and how to run them.

Every test builds programs through fresh closures, so `jax.jit`'s in-memory cache never hits
across tests; the persistent cache does whenever two tests compile the same HLO (the same tiny
model under another learning rate, a repeated run), as the CLI subprocesses already do.
"""

import collections
import os

import pytest

from cifar_jax.core import execution
from helpers import FASHION_MNIST, FASHION_MNIST_MISSING

REQUIRE_DATA = ("CI", "CIFAR_JAX_REQUIRE_DATA")  # set to true/1: missing test data is an error


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end tests that train through the CLI (deselect locally: "
                            "-m 'not slow'; CI runs every test, see docs/testing.md)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most end-to-end (`slow`) tests first, then the rest largest first: xdist
    hands out whole files in this order (`--no-loadscope-reorder`), so the few long files of
    subprocess tests start at once instead of last, when the other worker would sit idle."""
    slow, count = collections.Counter(), collections.Counter()
    for item in items:
        count[item.path] += 1
        slow[item.path] += item.get_closest_marker("slow") is not None
    items.sort(key=lambda item: (-slow[item.path], -count[item.path]))


def pytest_sessionstart(session: pytest.Session) -> None:
    required = [name for name in REQUIRE_DATA if os.environ.get(name, "").lower() in ("true", "1")]
    if required and not os.path.isdir(FASHION_MNIST):
        raise pytest.UsageError(f"{required[0]}={os.environ[required[0]]} but {FASHION_MNIST} is missing: the "
                                "end-to-end tests need it and must not be skipped; apt-get install dataset-fashion-mnist")


def pytest_terminal_summary(terminalreporter) -> None:
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if FASHION_MNIST_MISSING in str(report.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} end-to-end test(s) SKIPPED: {FASHION_MNIST_MISSING}",
                                    yellow=True, bold=True)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache() -> str | None:
    return execution.enable_compilation_cache()
