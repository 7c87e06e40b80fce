"""One end-to-end job (a benchmark e2e cell's cifar_jax side) from a given checkout, in this
process: its wall seconds, how many XLA programs it compiled and each run's final validation
accuracy. Run it alternately for two checkouts to A/B a start-up change on a quiet machine:

    for i in 1 2 3; do for src in /tmp/before /path/to/repo; do
        python scripts/startup_ab.py fmnist_a3 $src; done; done
"""

import json
import sys
import tempfile
import time
from pathlib import Path


def main(model: str, source: str) -> None:
    sys.path[:0] = [source, str(Path(source) / "scripts")]
    import benchmark_e2e
    from jax._src import compiler

    from cifar_jax.data.catalog import IMAGE_SHAPES
    from cifar_jax.job import train

    compiled = [0]
    compile_or_get_cached = compiler.compile_or_get_cached

    def counted(*args, **kwargs):
        compiled[0] += 1
        return compile_or_get_cached(*args, **kwargs)

    compiler.compile_or_get_cached = counted
    train_images, held_out = benchmark_e2e.sizes(model, False)
    root = Path(tempfile.mkdtemp(prefix=f"startup-ab-{model}-"))
    config = benchmark_e2e.job_config(model, str(root), False)
    benchmark_e2e._write_data(root, IMAGE_SHAPES[config.data.name], train_images + held_out, held_out)
    benchmark_e2e.process_start_s(with_torch=False)  # clu's TensorFlow import, outside the timed job
    start = time.perf_counter()
    train.train_and_evaluate(config, str(root / "job"))
    seconds = time.perf_counter() - start
    runs = json.loads((root / "job" / "results.json").read_text())["runs"]
    print(f"{model} {source}: job {seconds:.2f} s, {compiled[0]} compiles, "
          f"val acc {[round(r['val_accuracy'], 6) for r in runs]}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
