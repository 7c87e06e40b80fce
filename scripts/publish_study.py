"""Copies a study's report, plots and evidence from its workdir into docs/studies/ (the layout its
config's `study.evidence_dir` points at), so a fresh clone rebuilds the same report from them.

    python scripts/publish_study.py configs/studies/s000_lenet.py:cpu runs/s000 [docs/studies]

Run it from the repository root after `--mode=study` (or `--mode=report`) has written the workdir.
"""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cifar_jax.errors import CifarJaxError  # noqa: E402
from cifar_jax.experiments import study_report  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or ":" not in argv[1]:
        print("usage: python scripts/publish_study.py CONFIG.py:SCALE WORKDIR [ROOT=docs/studies]", file=sys.stderr)
        return 2
    path, scale = argv[1].rsplit(":", 1)
    spec = importlib.util.spec_from_file_location("study_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        print(study_report.publish(module.get_config(scale), argv[2], argv[3] if len(argv) == 4 else "docs/studies"))
    except CifarJaxError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
