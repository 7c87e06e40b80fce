"""One command that checks cifar_jax end to end on whatever device JAX finds (GPU, TPU or CPU).

    python scripts/device_check.py            # the full check (< 8 minutes on one GPU)
    python scripts/device_check.py --smoke    # tiny sizes, no test run: seconds on CPU (CI)

Prints versions and devices; runs the device-relevant tests (full mode); trains LeNet (32 seeds)
and the block CNN (16 seeds) on synthetic CIFAR-shaped data; compares XLA against patches
convolutions under vmap and bfloat16 against float32; finds the largest block-CNN seed count
whose batch-128 step fits the device (from the compiled step's memory analysis); saves a
checkpoint trained on the device and evaluates it on the CPU (the numbers must agree); times
PyTorch's LeNet on the same GPU (sequential and torch.func) where a CUDA PyTorch is installed. Writes
`<out>/device-check-<backend>-<date>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cifar_jax.core import memory  # noqa: E402
from cifar_jax.job import program as program_lib
from cifar_jax.core.splits import Examples, Splits  # noqa: E402
from cifar_jax.job import chunks, train  # noqa: E402
from cifar_jax.job.checkpoint import Checkpoints  # noqa: E402
from configs import block_cnn, lenet_tutorial  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_TESTS = ["tests/test_execution.py", "tests/test_streams.py", "tests/test_train.py", "tests/test_checkpoint.py",
                "tests/test_sharding.py", "tests/test_chunks.py", "tests/test_memory.py"]
# (examples, LeNet seeds, block-CNN seeds, epochs, block CNN shrunk) per mode.
SIZES = {"full": (10240, 32, 16, 2, False), "smoke": (256, 2, 2, 1, True)}


def synthetic(num_train: int, num_eval: int = 512) -> Splits:
    """CIFAR-shaped images whose class shifts their brightness, so training visibly learns."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, num_train + num_eval)
    images = (rng.integers(0, 100, (num_train + num_eval, 32, 32, 3)) + labels[:, None, None, None] * 15)
    images, labels = jnp.asarray(images.astype(np.uint8)), jnp.asarray(labels.astype(np.int32))
    return Splits(train=Examples(images[:num_train], labels[:num_train]),
                  eval={"val": Examples(images[num_train:], labels[num_train:])},
                  image_shape=(32, 32, 3), class_names=tuple(map(str, range(10))))


def model_config(name: str, seeds: int, shrink: bool, **execution):
    """LeNet or the block CNN at batch 128 (`shrink`: a two-block CNN of 8 and 16 channels)."""
    config = (lenet_tutorial if name == "lenet" else block_cnn).get_config()
    config.num_seeds, config.batch_size, config.eval_batch_size = seeds, 128, 500
    config.hparam_grid = type(config.hparam_grid)()
    if shrink and name == "block_cnn":
        config.model.block_channels, config.model.num_branches, config.model.classifier_features = (8, 16), 2, (16,)
    for key, value in execution.items():
        target, leaf = (config.model, "conv_impl") if key == "conv_impl" else (config.execution, key)
        target[leaf] = value
    return config


def train_timed(config, splits: Splits, epochs: int) -> dict:
    """Trains `epochs` epochs: the last epoch's model-images/s (training calls only, compiles
    excluded: job/chunks.py) and the accuracy."""
    setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train)
    state, clock = setup.state, chunks.ChunkClock(setup.program.plan, setup.program.steps_per_epoch)
    for epoch in range(1, epochs + 1):
        state, _, _ = train.train_epoch(setup.program, state, setup.hparams, *splits.train, epoch, clock=clock)
    scores = train.score_split(setup.program, state, setup.hparams, *splits.eval["val"], config.eval_batch_size)
    plan = setup.program.plan
    print(f"{config.model.name} {plan.conv_impl}/{plan.compute_dtype}: {clock.images_per_s(config.batch_size * setup.num_runs):,.0f} img/s", flush=True)
    return {"runs": setup.num_runs, "img_per_s": clock.images_per_s(config.batch_size * setup.num_runs),
            "compile_s": clock.compile_s,
            "val_accuracy_mean": float(np.mean(scores["accuracy"])), "compute_dtype": plan.compute_dtype,
            "conv_impl": plan.conv_impl, "runs_per_group": plan.runs_per_group,
            "run_memory": None if plan.memory is None else plan.memory.describe(), "setup": setup, "state": state}


def largest_block_cnn(splits: Splits, shrink: bool, limit: int | None, groups: bool = True) -> dict:
    """The largest block-CNN seed count at batch 128 that fits one device, at once and (`groups`:
    two more compiles, ~20 s of CPU for the smoke's shrunk model) one at a time."""
    config = model_config("block_cnn", 1, shrink, policy="accelerator", memory_limit_bytes=limit or 0)
    limit = memory.device_limit(config)
    if limit is None:
        return {"note": "the device reports no memory limit"}
    m = program_lib.run_memory(config, splits.image_shape, 10, splits.num_train, data=train.job_data(config, splits),
                               groups=groups)
    return {"limit_bytes": limit, "run": m.describe(), "all_at_once": memory.runs_that_fit(m, limit, at_once=True),
            "one_at_a_time": memory.runs_that_fit(m, limit, at_once=False) if groups else "not measured (smoke)"}


def checkpoint_on_cpu(result: dict, splits: Splits) -> dict:
    """Saves the trained state, restores it onto the CPU and evaluates it there with the same
    plan's dtype and convolutions; the device's and the CPU's numbers must agree."""
    setup, config = result["setup"], None
    device_scores = train.score_split(setup.program, result["state"], setup.hparams, *splits.eval["val"], 500)
    with tempfile.TemporaryDirectory() as directory:
        checkpoints = Checkpoints(directory, keep=1, best_metric="val_accuracy")
        checkpoints.save(1, setup.real_runs(result["state"]), {"history": []}, None)
        checkpoints.wait()
        cpu = jax.devices("cpu")[0]
        with jax.default_device(cpu):
            plan = setup.program.plan
            config = model_config("lenet", setup.num_runs, False, compute_dtype=plan.compute_dtype,
                                  conv_impl=plan.conv_impl, policy=plan.policy)
            program = program_lib.make_train(config, splits.image_shape, 10, splits.num_train, backend="cpu")
            like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.
                                                               SingleDeviceSharding(cpu)), setup.real_runs(result["state"]))
            _, state, _ = Checkpoints(directory, keep=1, best_metric="val_accuracy").restore(like)
            images, labels = (jax.device_put(a, cpu) for a in splits.eval["val"])
            cpu_scores = train.score_split(program, state, jax.device_put(setup.hparams, cpu), images, labels, 500)
    return {"device_accuracy": device_scores["accuracy"].tolist(), "cpu_accuracy": cpu_scores["accuracy"].tolist(),
            "max_loss_difference": float(np.max(np.abs(device_scores["loss"] - cpu_scores["loss"]))),
            "equal_accuracy": bool(np.allclose(device_scores["accuracy"], cpu_scores["accuracy"], atol=2 / 512))}


def torch_on_device(seeds: int, steps: int = 50) -> dict:
    """PyTorch's LeNet at batch 128 on the GPU JAX uses: one seed's loop (sequential; the seeds'
    time is that times `seeds`) and `seeds` models at once with torch.func, model-images/s."""
    try:
        import torch
    except ImportError:
        return {"note": "PyTorch is not installed"}
    if jax.default_backend() != "gpu" or not torch.cuda.is_available():
        return {"note": f"no CUDA PyTorch beside JAX's {jax.default_backend()} (torch {torch.__version__})"}
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import torch_reference
    from configs import study_models

    torch_reference.DEVICE = torch.device("cuda")
    config = study_models.MODELS["lenet"].config(128)
    rates = {}
    for name, runner, models in (("sequential", torch_reference.ThroughputRunner(config, 128), 1),
                                 ("torch.func", torch_reference.FuncThroughputRunner(config, 128, seeds), seeds)):
        runner.steps(5)  # warm-up: cuDNN autotuning, allocator
        wall, _ = runner.steps(steps)
        rates[name] = models * steps * 128 / wall
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "img_per_s": rates}


def run_tests() -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow", *DEVICE_TESTS], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return {"returncode": done.returncode, "seconds": time.perf_counter() - start,
            "summary": (done.stdout.strip().splitlines() or [""])[-1]}


def versions() -> dict:
    device = jax.devices()[0]
    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jax.lib.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "device_kind": device.device_kind, "memory_stats": {k: v for k, v in (device.memory_stats() or {}).items()
                                                                 if k in ("bytes_limit", "bytes_in_use")}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and no test run (CI, any CPU)")
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks"))
    args = parser.parse_args(argv)
    examples, lenet_seeds, block_seeds, epochs, shrink = SIZES["smoke" if args.smoke else "full"]
    splits = synthetic(examples)
    report = {"versions": versions(), "mode": "smoke" if args.smoke else "full"}
    print(json.dumps(report["versions"]), flush=True)
    if not args.smoke:
        report["tests"] = run_tests()
    # On a CPU the accelerator's path (XLA convolutions, memory sizing) is taken too, in float32:
    # XLA:CPU's bfloat16 convolutions are emulated and slow.
    dtype = "float32" if jax.default_backend() == "cpu" else "auto"
    accelerate = {"policy": "accelerator"}
    report["train"] = {name: train_timed(model_config(name, seeds, shrink, compute_dtype=dtype, **accelerate),
                                         splits, epochs)
                       for name, seeds in (("lenet", lenet_seeds), ("block_cnn", block_seeds))}
    lenet = report["train"]["lenet"]
    report["conv_and_dtype"] = {f"{conv}/{dtype}": lenet if (conv, dtype) == (lenet["conv_impl"], lenet["compute_dtype"])
                                else train_timed(model_config("lenet", lenet_seeds, False, conv_impl=conv,
                                                              compute_dtype=dtype, **accelerate), splits, epochs)
                                for conv in ("xla", "patches") for dtype in ("bfloat16", "float32")
                                if not args.smoke or dtype == "float32"}
    report["largest_block_cnn"] = largest_block_cnn(splits, shrink, 2**30 if args.smoke else None, not args.smoke)
    report["checkpoint_on_cpu"] = checkpoint_on_cpu(report["train"]["lenet"], splits)
    report["pytorch_same_device"] = torch_on_device(lenet_seeds)
    return write(report, args.out)


def write(report: dict, out: str) -> dict:
    """The JSON (training results without their states) and a markdown table."""
    for group in ("train", "conv_and_dtype"):
        for result in report[group].values():
            result.pop("setup", None), result.pop("state", None)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"device-check-{report['versions']['backend']}-{report['mode']}-"
                             f"{datetime.date.today().isoformat()}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    rows = [f"| {group}: {name} | {r['runs']} | {r['compute_dtype']} | {r['conv_impl']} | {r['img_per_s']:,.0f} | "
            f"{r['val_accuracy_mean']:.3f} | {r['run_memory'] or ''} |"
            for group in ("train", "conv_and_dtype") for name, r in report[group].items()]
    text = "\n".join([f"# Device check: {report['versions']['device_kind']} ({report['mode']})", "",
                      "| what | runs | dtype | conv | model-img/s | val acc | memory |", "|---|---|---|---|---|---|---|",
                      *rows, "", f"largest block CNN at batch 128: {json.dumps(report['largest_block_cnn'])}",
                      f"checkpoint evaluated on CPU: {json.dumps(report['checkpoint_on_cpu'])}",
                      f"PyTorch on the same device: {json.dumps(report['pytorch_same_device'])}",
                      f"tests: {json.dumps(report.get('tests', 'not run (smoke)'))}", ""])
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text, flush=True)
    return report


if __name__ == "__main__":
    main()
