"""PyTorch reference implementations of the studies' models and recipes, written the way the studies did.

A plain PyTorch loop (no Lightning, no compile): the model built after `torch.manual_seed(seed)`,
a DataLoader-like shuffle (`torch.randperm` from a `torch.Generator` seeded per seed, the last
partial batch dropped as cifar_jax does), per-batch `uint8 -> float / 255`, `Normalize(mean, std)`,
CrossEntropyLoss, `zero_grad / backward / step`, the recipe's learning-rate schedule per step.

The models are the studies' (`configs/study_models.py`: LeNet, study 001's three-layer CNN, study
002's four Fashion-MNIST networks, study 003's block CNN full and reduced, study 004's CNN and MLP),
built by `build_model` from the same config fields cifar_jax builds its own from, with PyTorch's
layers (nn.Conv2d, nn.BatchNorm2d/1d, nn.Dropout/Dropout2d, nn.MaxPool2d/AvgPool2d/LPPool2d,
nn.Linear): the parameter counts are equal (tests/test_torch_reference.py). The data are the arrays
cifar_jax trains on (`load_dataset` and `validation_split` of the config's data section).

A job (`train_job`, the CLI): each seed trained one after another, validation scored every epoch,
the best epoch's weights kept (by validation accuracy, earliest on ties), the test split scored
at the final and the best epoch: the evaluations cifar_jax's job does.

Usage (torch is in the optional extra: pip install -e .[bench]):
  python scripts/torch_reference.py --model lenet --seeds 3 --threads 2
  python scripts/torch_reference.py --model cnn_bn_dropout --seeds 1 --json runs/torch_cnn.json

Augmentation is not reproduced (the benchmark turns it off on both sides).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import study_models  # noqa: E402

# Where the throughput runners train: scripts/benchmark.py sets CUDA when JAX runs on a GPU, so
# both frameworks are timed on the same device.
DEVICE = torch.device("cpu")

DEFAULT_CIFAR_DIR = str((REPO / ".." / "shared" / "data" / "cifar10-jpeg").resolve())
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU,
               "sigmoid": nn.Sigmoid, "silu": nn.SiLU}
GATES = {"none": lambda g: g, "softmax": lambda g: g.softmax(-1), "sigmoid": torch.sigmoid, "relu": F.relu}


# ----------------------------------------------------------------------------- models


def _field(cfg, name: str, default):
    return cfg.get(name, default)


def _pool(kind: str, size: int) -> list[nn.Module]:
    return {"max": [nn.MaxPool2d(size)], "avg": [nn.AvgPool2d(size)], "lp": [nn.LPPool2d(2, size)],
            "none": []}[kind]


def _dense_layers(cfg, widths, c: int, bn_momentum: float) -> tuple[list[nn.Module], int]:
    """Hidden Linear -> BatchNorm1d? -> activation -> Dropout? layers, as cifar_jax's dense head."""
    rate, placement = float(_field(cfg, "dropout_rate", 0.0)), _field(cfg, "dropout_placement", "none")
    layers = []
    for f in widths:
        layers.append(nn.Linear(c, int(f)))
        if _field(cfg, "dense_batch_norm", False):
            layers.append(nn.BatchNorm1d(int(f), momentum=bn_momentum))
        layers.append(ACTIVATIONS[_field(cfg, "activation", "relu")]())
        if rate > 0 and placement in ("dense", "all"):
            layers.append(nn.Dropout(rate))
        c = int(f)
    if rate > 0 and placement == "head":
        layers.append(nn.Dropout(rate))
    return layers, c


def configurable_cnn(cfg, input_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """[conv -> BatchNorm2d? -> activation -> dropout? -> pool] * stages -> flatten -> dense
    head: the studies' LeNet, CNNs and MLPs (`model.name` 'cnn' or 'mlp')."""
    h, w, c = input_shape
    features = () if cfg.name == "mlp" else tuple(cfg.conv_features)
    n = len(features)
    kernels = tuple(cfg.kernel_size) if n else ()
    strides = tuple(cfg.strides) if n else ()
    kernels, strides = (kernels * n if len(kernels) == 1 else kernels), (strides * n if len(strides) == 1 else strides)
    rate, placement = float(_field(cfg, "dropout_rate", 0.0)), _field(cfg, "dropout_placement", "none")
    bn_momentum = 1.0 - float(_field(cfg, "bn_momentum", 0.9))  # Flax's 0.9 is PyTorch's 0.1
    pool, pool_size = _field(cfg, "pool", "max"), int(_field(cfg, "pool_size", 2))
    layers = []
    for f, k, s in zip(features, kernels, strides):
        pad = k // 2 if cfg.padding == "SAME" else 0
        layers.append(nn.Conv2d(c, f, k, stride=s, padding=pad))
        if _field(cfg, "conv_batch_norm", False):
            layers.append(nn.BatchNorm2d(f, momentum=bn_momentum))
        layers.append(ACTIVATIONS[_field(cfg, "activation", "relu")]())
        if rate > 0 and placement in ("conv", "all"):
            layers.append(nn.Dropout2d(rate) if _field(cfg, "dropout_kind", "element") == "channel" else nn.Dropout(rate))
        layers += _pool(pool, pool_size)
        h, w, c = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1, f
        if pool != "none":
            h, w = h // pool_size, w // pool_size
    head, width = _dense_layers(cfg, _field(cfg, "dense_features", ()), h * w * c, bn_momentum)
    return nn.Sequential(*layers, nn.Flatten(), *head, nn.Linear(width, num_classes))


class Block(nn.Module):
    """k conv branches (one conv with k*C_out channels, as in cifar_jax) -> activation -> dropout
    -> maxpool 2, mixed by a gate (global average pool -> Linear(C_in, k) -> gate function, or
    fixed weights 1/k), then BatchNorm2d."""

    def __init__(self, c_in: int, c_out: int, branches: int, dropout: float, gate: str, activation: str,
                 bn_momentum: float):
        super().__init__()
        self.branches, self.c_out, self.gate_fn = branches, c_out, gate
        self.conv = nn.Conv2d(c_in, branches * c_out, 3, padding=1)
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.gate = None if gate == "uniform" else nn.Linear(c_in, branches)
        self.bn = nn.BatchNorm2d(c_out, momentum=bn_momentum)

    def forward(self, x):
        if self.gate is None:
            g = x.new_full((x.shape[0], self.branches), 1.0 / self.branches)
        else:
            g = GATES[self.gate_fn](self.gate(x.mean(dim=(2, 3))))  # (N, k)
        y = F.max_pool2d(self.dropout(self.activation(self.conv(x))), 2)
        n, _, h, w = y.shape
        y = y.view(n, self.branches, self.c_out, h, w)
        return self.bn(torch.einsum("nkchw,nk->nchw", y, g))


class BlockCNN(nn.Module):
    """Study 003's adaptive block CNN: blocks, global average pool, MLP classifier."""

    def __init__(self, cfg, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        rate, placement = float(_field(cfg, "dropout_rate", 0.0)), _field(cfg, "dropout_placement", "none")
        bn_momentum = 1.0 - float(_field(cfg, "bn_momentum", 0.9))
        blocks, c = [], input_shape[2]
        for f in cfg.block_channels:
            blocks.append(Block(c, int(f), int(cfg.num_branches), rate if placement in ("conv", "all") else 0.0,
                                _field(cfg, "gate", "none"), _field(cfg, "activation", "relu"), bn_momentum))
            c = int(f)
        self.blocks = nn.Sequential(*blocks)
        head, width = _dense_layers(cfg, cfg.classifier_features, c, bn_momentum)
        self.head = nn.Sequential(*head, nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.blocks(x).mean(dim=(2, 3)))


def build_model(model_config, input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """The PyTorch network of a cifar_jax model config ('cnn', 'mlp' or 'block_cnn')."""
    if model_config.name in ("cnn", "mlp"):
        return configurable_cnn(model_config, tuple(input_shape), num_classes)
    if model_config.name == "block_cnn":
        return BlockCNN(model_config, tuple(input_shape), num_classes)
    raise ValueError(f"model.name={model_config.name!r} has no PyTorch reference; use cnn, mlp or block_cnn")


def input_shape(config) -> tuple[int, int, int]:
    from cifar_jax.data.catalog import IMAGE_SHAPES

    return IMAGE_SHAPES[config.data.name]


def make_model(config) -> nn.Module:
    """The config's network on its data's image shape (10 classes)."""
    return build_model(config.model, input_shape(config))


def make_optimizer(optim_config, params) -> torch.optim.Optimizer:
    """torch.optim's optimizer for `config.optim` (coupled weight decay; AdamW decoupled)."""
    name, lr, wd = optim_config.name, optim_config.learning_rate, optim_config.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim_config.momentum, nesterov=optim_config.nesterov,
                               weight_decay=wd)
    if name in ("adam", "adamw"):
        decoupled = name == "adamw" or optim_config.weight_decay_mode == "decoupled"
        return (torch.optim.AdamW if decoupled else torch.optim.Adam)(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=optim_config.momentum, weight_decay=wd)
    raise ValueError(f"optim.name={name!r} has no PyTorch reference")


def lr_multipliers(optim_config, steps_per_epoch: int, num_epochs: int) -> np.ndarray:
    """The schedule's factor at every step: cifar_jax's own schedule function, evaluated once."""
    import jax
    import jax.numpy as jnp

    from cifar_jax.core import optim

    schedule = optim.make_schedule(optim_config, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
    return np.asarray(jax.vmap(schedule)(jnp.arange(steps_per_epoch * num_epochs)), np.float64)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- data and the job loop


def load_splits(config, data_dir: str = "", train_limit: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train', 'val', 'test'?: (uint8 NHWC images, int64 labels)}: the config's data set and
    validation split (data.val_size, data.seed), as cifar_jax carves them."""
    from cifar_jax.data import datasets, holdout

    data_config = config.data.copy_and_resolve_references()
    if data_dir:
        data_config.dir = data_dir
    elif not data_config.dir and data_config.name == "cifar10":
        data_config.dir = DEFAULT_CIFAR_DIR
    data_config.train_limit = int(train_limit or data_config.train_limit)
    dataset = datasets.load_dataset(data_config)
    train_idx, val_idx = holdout.validation_split(dataset.train_labels, data_config.val_size, data_config.seed)
    images, labels = dataset.train_images, dataset.train_labels.astype(np.int64)
    out = {"train": (images[train_idx], labels[train_idx])}
    if len(val_idx):
        out["val"] = (images[val_idx], labels[val_idx])
    if dataset.test_images is not None and len(dataset.test_images):
        out["test"] = (dataset.test_images, dataset.test_labels.astype(np.int64))
    return out


def to_input(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (ToTensor + Normalize(mean, std)), per batch."""
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    channels = x.shape[1]
    mean = torch.tensor(tuple(mean) * (channels if len(mean) == 1 else 1), device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(tuple(std) * (channels if len(std) == 1 else 1), device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


@torch.no_grad()
def score(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int = 1000) -> dict:
    """Accuracy and mean cross-entropy of `model` in eval mode."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(labels), batch_size):
        logits = model(to_input(torch.from_numpy(images[i:i + batch_size]), mean, std))
        targets = torch.from_numpy(labels[i:i + batch_size])
        correct += int((logits.argmax(1) == targets).sum())
        loss += float(F.cross_entropy(logits, targets, reduction="sum"))
    return {"accuracy": correct / len(labels), "loss": loss / len(labels)}


def _better(value: float, best: float, metric: str) -> bool:
    """Strictly better (ties keep the earlier epoch), as cifar_jax's best epoch."""
    return value < best if "loss" in metric else value > best


def train_seed(config, seed: int, splits: dict, log=print) -> dict:
    """One seed's job: train `config.num_epochs` epochs, score validation each epoch, keep the best
    epoch's weights (by `checkpoint.best_metric`), score test at the final and the best epoch. Returns its metrics and seconds
    (training and evaluation apart)."""
    torch.manual_seed(seed)
    model = make_model(config)
    optimizer = make_optimizer(config.optim, model.parameters())
    train_x, train_y = (torch.from_numpy(a) for a in splits["train"])
    steps = len(train_y) // config.batch_size
    factors = lr_multipliers(config.optim, steps, config.num_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factors[min(step, len(factors) - 1)])
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)  # DataLoader(shuffle=True, drop_last=True, generator=...)
    mean, std, metric = config.data.mean, config.data.std, config.checkpoint.best_metric
    best, best_state, history, train_s, eval_s = None, None, [], 0.0, 0.0
    for epoch in range(1, config.num_epochs + 1):
        start = time.perf_counter()
        model.train()
        order, running = torch.randperm(len(train_y), generator=generator), 0.0
        for i in range(steps):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            optimizer.zero_grad()
            loss = criterion(model(to_input(train_x[idx], mean, std)), train_y[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
        train_s += time.perf_counter() - start
        start = time.perf_counter()
        record = {"epoch": epoch, "train_loss": running / steps}
        if "val" in splits:
            record.update({f"val_{k}": v for k, v in score(model, *splits["val"], mean, std).items()})
            if best is None or _better(record[metric], best[metric], metric):
                best, best_state = record, copy.deepcopy(model.state_dict())
        history.append(record)
        eval_s += time.perf_counter() - start
        log(f"  seed {seed} epoch {epoch}/{config.num_epochs} " + " ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
    start = time.perf_counter()
    result = {"seed": seed, **history[-1], "images": steps * config.batch_size * config.num_epochs}
    if "test" in splits:
        result.update({f"test_{k}": v for k, v in score(model, *splits["test"], mean, std).items()})
        if best is not None:
            model.load_state_dict(best_state)
            result.update({f"best_test_{k}": v for k, v in score(model, *splits["test"], mean, std).items()})
    if best is not None:
        result.update(best_epoch=best["epoch"], **{f"best_{metric}": best[metric]})
    eval_s += time.perf_counter() - start
    return {**result, "train_s": train_s, "eval_s": eval_s}


def train_job(config, seeds: int, splits: dict, log=print) -> dict:
    """Every seed's job one after another, as the studies ran them; wall seconds of the whole."""
    start = time.perf_counter()
    runs = [train_seed(config, seed, splits, log) for seed in range(seeds)]
    return {"runs": runs, "wall_s": time.perf_counter() - start, "torch": torch.__version__}


# ----------------------------------------------------------------------------- throughput


class _SyntheticRunner:
    """Training steps on random batches of synthetic uint8 images of the config's shape, timed a
    few at a time so a benchmark can interleave them with other measurements."""

    def __init__(self, config, batch_size: int, threads: int, seed: int, num_images: int):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.config, self.batch_size, self.threads = config, batch_size, threads
        rng = np.random.default_rng(seed)
        self.images = torch.from_numpy(rng.integers(0, 256, (num_images, *input_shape(config)), dtype=np.uint8)).to(DEVICE)
        self.labels = torch.from_numpy(rng.integers(0, 10, num_images).astype(np.int64)).to(DEVICE)
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        raise NotImplementedError

    def steps(self, count: int) -> tuple[float, float]:
        """Runs `count` training steps; returns (wall seconds, process CPU seconds)."""
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            idx = torch.randint(0, len(self.labels), (self.batch_size,), generator=self.generator)
            self.step(to_input(self.images[idx], self.config.data.mean, self.config.data.std), self.labels[idx])
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu


class ThroughputRunner(_SyntheticRunner):
    """One seed's training loop (per-batch normalisation, zero_grad/backward/step) on synthetic data."""

    def __init__(self, config, batch_size: int, *, threads: int = 2, seed: int = 0, num_images: int = 4096):
        super().__init__(config, batch_size, threads, seed, num_images)
        self.model = make_model(config).to(DEVICE)
        self.model.train()
        self.optimizer = make_optimizer(config.optim, self.model.parameters())
        self.criterion = nn.CrossEntropyLoss()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self.criterion(self.model(x), y).backward()
        self.optimizer.step()

    def step_bytes(self) -> int:
        """Bytes a training step holds: the tensors autograd saves for the backward (counted by a
        saved-tensors hook over one forward) plus parameters, gradients and two optimizer slots.
        Counted, not read from the RSS, which a process's earlier frees hide."""
        saved = 0

        def count(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += tensor.numel() * tensor.element_size()
            return tensor
        x = to_input(self.images[: self.batch_size], self.config.data.mean, self.config.data.std)
        with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
            self.criterion(self.model(x), self.labels[: self.batch_size])
        return saved + 4 * sum(p.numel() * p.element_size() for p in self.model.parameters())


class FuncThroughputRunner(_SyntheticRunner):
    """Many models at once the strongest plain-PyTorch way, `torch.func`: the models' parameters
    stacked (`stack_module_state`), one `vmap(grad(functional_call))` step for all of them on a
    shared batch (the most favourable case for PyTorch: a grid's runs of one seed read the same
    data), and the recipe's optimizer stepping the stacked tensors (SGD with momentum and Adam
    are elementwise, so that is exact per model). `lr_scales` (one per model) multiplies each
    model's gradient: exactly a per-model learning rate for SGD with momentum, the same work
    for Adam. Batch norm keeps no running statistics under vmap (`replace_all_batch_norm_modules_`):
    less work than the models it stands for."""

    def __init__(self, config, batch_size: int, num_models: int, *, threads: int = 2, seed: int = 0,
                 num_images: int = 4096, lr_scales: list[float] | None = None):
        from torch import func

        super().__init__(config, batch_size, threads, seed, num_images)
        models = [make_model(config).to(DEVICE) for _ in range(num_models)]
        for model in models:
            func.replace_all_batch_norm_modules_(model)
            model.train()
        params, self.buffers = func.stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")

        def loss(params, buffers, x, y):
            return F.cross_entropy(func.functional_call(base, (params, buffers), (x,)), y)

        self.grads = func.vmap(func.grad(loss), in_dims=(0, 0, None, None), randomness="different")
        self.params = {k: nn.Parameter(v) for k, v in params.items()}  # the tensors the optimizer steps
        self.optimizer = make_optimizer(config.optim, list(self.params.values()))
        scales = torch.tensor(lr_scales or [1.0] * num_models, dtype=torch.float32, device=DEVICE)
        self.scales = {k: scales.view(-1, *([1] * (v.ndim - 1))) for k, v in self.params.items()}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        grads = self.grads(self.params, self.buffers, x, y)
        for key, param in self.params.items():
            param.grad = grads[key] * self.scales[key]
        self.optimizer.step()


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet", choices=list(study_models.MODELS))
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, trained one after another")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the study's first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--train_limit", type=int, default=0, help="first N training images (0 = the recipe's)")
    parser.add_argument("--data_dir", default="", help="default: the config's (CIFAR-10: the shared copy)")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = study_models.MODELS[args.model].config(args.batch_size)
    config.num_epochs = args.epochs or config.num_epochs
    splits = load_splits(config, args.data_dir, args.train_limit)
    print(f"{args.model}: {len(splits['train'][1])} train / {len(splits.get('val', (0, []))[1])} val images, batch "
          f"{config.batch_size}, {config.num_epochs} epochs, {args.threads} threads, torch {torch.__version__}",
          flush=True)
    job = train_job(config, args.seeds, splits, log=lambda line: print(line, flush=True))
    for run in job["runs"]:
        print(f"seed {run['seed']}: " + "  ".join(f"{k} {v:.4f}" for k, v in run.items()
                                                   if k not in ("seed", "epoch", "images")), flush=True)
    print(f"{args.model}, {args.seeds} seeds: {job['wall_s']:.1f} s, "
          f"{sum(r['images'] for r in job['runs']) / sum(r['train_s'] for r in job['runs']):,.0f} training images/s")
    result = {"model": args.model, "batch_size": config.batch_size, "epochs": config.num_epochs,
              "threads": args.threads, **job}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
