"""PyTorch reference implementations of the studies' recipes, written the way the studies did.

A plain PyTorch loop (no Lightning, no compile): the model built after `torch.manual_seed(seed)`,
a DataLoader-like shuffle (`torch.randperm` from a `torch.Generator` seeded per seed, every
batch kept), per-batch `uint8 -> float / 255`, `Normalize(mean, std)`, CrossEntropyLoss,
`zero_grad / backward / step`. The data are the same arrays cifar_jax trains on:
`cifar_jax.data.datasets.load_dataset` and `holdout.validation_split(labels, 10000, seed=0)`, so both frameworks
see the same 40,000 / 10,000 split of the shared CIFAR-10 images.

Recipes (`RECIPES`):
  lenet           the PyTorch tutorial: conv 6@5x5 -> maxpool 2 -> conv 16@5x5 -> maxpool 2 ->
                  120 -> 84 -> 10 (ReLU, VALID), SGD lr 1e-3 momentum 0.9, batch 4, 2 epochs,
                  Normalize(0.5, 0.5).
  cnn_bn_dropout  the fifth study: [conv 3x3 (padding 1) -> BatchNorm2d -> ReLU -> Dropout(0.5) ->
                  maxpool 2] x (64, 128) -> Linear(8*8*128, 10); Adam lr 1e-3, batch 100,
                  5 epochs, Normalize(0.5, 0.5).
  block_cnn       the fourth study's adaptive block CNN (k parallel conv branches mixed by a
                  gate, BatchNorm2d, global average pool, MLP 256-128-64), Adam(weight_decay=
                  5e-4); reduced sizes via `make_model('block_cnn', channels=..., branches=...)`
                  for CPU benchmarks (scripts/benchmark.py), no schedule or augmentation here.

Usage (torch is in the optional extra: pip install -e .[bench]):
  python scripts/torch_reference.py --model lenet --seeds 3 --threads 2
  python scripts/torch_reference.py --model cnn_bn_dropout --seeds 1 --json runs/torch_cnn.json

Prints each seed's validation accuracy, mean +- std over seeds and training images/s.
`scripts/benchmark.py` imports `make_model`, `make_optimizer`, `RECIPES` and
`train_steps_per_second` from here.
"""

from __future__ import annotations

import argparse
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
DEFAULT_DATA_DIR = str((REPO / ".." / "shared" / "data" / "cifar10-jpeg").resolve())

RECIPES = {
    "lenet": dict(batch_size=4, epochs=2, optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=0.0),
    "cnn_bn_dropout": dict(batch_size=100, epochs=5, optimizer="adam", lr=1e-3, weight_decay=0.0),
    "block_cnn": dict(batch_size=128, epochs=50, optimizer="adam", lr=1e-3, weight_decay=5e-4),
}
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------- models


class LeNet(nn.Module):
    """The CIFAR-10 tutorial network: 62,006 parameters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class CNNBatchNormDropout(nn.Module):
    """The fifth study's CNN: 157,962 parameters."""

    def __init__(self, num_classes: int = 10, channels=(64, 128), dropout: float = 0.5):
        super().__init__()
        layers, c = [], 3
        for f in channels:
            layers += [nn.Conv2d(c, f, 3, padding=1), nn.BatchNorm2d(f), nn.ReLU(), nn.Dropout(dropout),
                       nn.MaxPool2d(2)]
            c = f
        self.features = nn.Sequential(*layers)
        side = 32 // 2 ** len(channels)
        self.classifier = nn.Linear(c * side * side, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Block(nn.Module):
    """k conv branches (one conv with k*C_out channels, as in cifar_jax) -> ReLU -> dropout ->
    maxpool 2, mixed by a gate (global average pool -> Linear(C_in, k), no nonlinearity),
    then BatchNorm2d."""

    def __init__(self, c_in: int, c_out: int, branches: int, dropout: float):
        super().__init__()
        self.branches, self.c_out = branches, c_out
        self.conv = nn.Conv2d(c_in, branches * c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Linear(c_in, branches)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        g = self.gate(x.mean(dim=(2, 3)))  # (N, k)
        y = F.max_pool2d(self.dropout(F.relu(self.conv(x))), 2)
        n, _, h, w = y.shape
        y = y.view(n, self.branches, self.c_out, h, w)
        return self.bn(torch.einsum("nkchw,nk->nchw", y, g))


class BlockCNN(nn.Module):
    def __init__(self, num_classes: int = 10, channels=(64, 128, 256, 512), branches: int = 6,
                 classifier=(256, 128, 64), dropout: float = 0.1):
        super().__init__()
        blocks, c = [], 3
        for f in channels:
            blocks.append(Block(c, f, branches, dropout))
            c = f
        self.blocks = nn.Sequential(*blocks)
        head = []
        for f in classifier:
            head += [nn.Linear(c, f), nn.ReLU()]
            c = f
        self.head = nn.Sequential(*head, nn.Linear(c, num_classes))

    def forward(self, x):
        return self.head(self.blocks(x).mean(dim=(2, 3)))


def make_model(name: str, **kwargs) -> nn.Module:
    """'lenet' | 'cnn_bn_dropout' | 'block_cnn' (kwargs: channels, branches, classifier, dropout)."""
    if name == "lenet":
        return LeNet(**kwargs)
    if name == "cnn_bn_dropout":
        return CNNBatchNormDropout(**kwargs)
    if name == "block_cnn":
        return BlockCNN(**kwargs)
    raise ValueError(f"unknown model {name!r}; use one of {', '.join(RECIPES)}")


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    recipe = RECIPES[name]
    if recipe["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                               weight_decay=recipe["weight_decay"])
    return torch.optim.Adam(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])


# ----------------------------------------------------------------------------- data and loop


def load_cifar(data_dir: str = DEFAULT_DATA_DIR, train_limit: int = 0):
    """(train_images, train_labels, val_images, val_labels): uint8 NHWC numpy arrays and int64
    labels, the same 40,000 / 10,000 split cifar_jax's configs use (val_size 10000, seed 0)."""
    sys.path.insert(0, str(REPO))
    from cifar_jax.data import datasets, holdout
    from configs import lenet_tutorial

    data_config = lenet_tutorial.get_config().data
    data_config.dir = data_dir
    data_config.train_limit = int(train_limit)
    dataset = datasets.load_dataset(data_config)
    train_idx, val_idx = holdout.validation_split(dataset.train_labels, 10000, seed=0)
    images, labels = dataset.train_images, dataset.train_labels.astype(np.int64)
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def to_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (ToTensor + Normalize(0.5, 0.5)), per batch."""
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def train_one_seed(name: str, seed: int, train_x: np.ndarray, train_y: np.ndarray, epochs: int,
                   batch_size: int, log=print, **model_kwargs):
    """Trains one model; returns (model, training seconds, images trained)."""
    torch.manual_seed(seed)
    model = make_model(name, **model_kwargs)
    optimizer = make_optimizer(name, model)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)  # DataLoader(shuffle=True, generator=...)
    images, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
    n, seen, start = len(labels), 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        running = 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            inputs, targets = to_input(images[idx]), labels[idx]
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        log(f"  seed {seed} epoch {epoch + 1}/{epochs} train loss {running / n:.3f}")
    return model, time.perf_counter() - start, seen


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(to_input(torch.from_numpy(images[i:i + batch_size])))
        correct += int((logits.argmax(1) == torch.from_numpy(labels[i:i + batch_size])).sum())
    return correct / len(labels)


class _SyntheticRunner:
    """Training steps on random batches of synthetic CIFAR-sized uint8 data, timed a few at a
    time so a benchmark can interleave them with other measurements; `step(x, y)` is the loop's."""

    def __init__(self, batch_size: int, threads: int, seed: int, num_images: int):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.batch_size, self.threads = batch_size, threads
        rng = np.random.default_rng(seed)
        self.images = torch.from_numpy(rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8))
        self.labels = torch.from_numpy(rng.integers(0, 10, num_images).astype(np.int64))
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        raise NotImplementedError

    def steps(self, count: int) -> tuple[float, float]:
        """Runs `count` training steps; returns (wall seconds, process CPU seconds)."""
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            idx = torch.randint(0, len(self.labels), (self.batch_size,), generator=self.generator)
            self.step(to_input(self.images[idx]), self.labels[idx])
        return time.perf_counter() - wall, time.process_time() - cpu


class ThroughputRunner(_SyntheticRunner):
    """One seed's training loop on synthetic CIFAR-sized uint8 data, the same loop as
    `train_one_seed` (random batches, per-batch normalisation, zero_grad/backward/step), timed
    a few steps at a time so a benchmark can interleave it with other measurements."""

    def __init__(self, name: str, batch_size: int, *, threads: int = 2, seed: int = 0, num_images: int = 4096,
                 **model_kwargs):
        super().__init__(batch_size, threads, seed, num_images)
        self.model = make_model(name, **model_kwargs)
        self.model.train()
        self.optimizer = make_optimizer(name, self.model)
        self.criterion = nn.CrossEntropyLoss()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self.criterion(self.model(x), y).backward()
        self.optimizer.step()


class FuncThroughputRunner(_SyntheticRunner):
    """Many models at once the strongest plain-PyTorch way, `torch.func`: the models' parameters
    stacked (`stack_module_state`), one `vmap(grad(functional_call))` step for all of them on a
    shared batch (the most favourable case for PyTorch: a grid's runs of one seed read the same
    data), and the recipe's optimizer stepping the stacked tensors (SGD with momentum and Adam
    are elementwise, so that is exact per model). `lr_scales` (one per model) multiplies each
    model's gradient: exactly a per-model learning rate for SGD with momentum, the same work
    for Adam. Batch norm keeps no running statistics under vmap (`replace_all_batch_norm_modules_`):
    less work than the models it stands for."""

    def __init__(self, name: str, batch_size: int, num_models: int, *, threads: int = 2, seed: int = 0,
                 num_images: int = 4096, lr_scales: list[float] | None = None, **model_kwargs):
        import copy

        from torch import func

        super().__init__(batch_size, threads, seed, num_images)
        models = [make_model(name, **model_kwargs) for _ in range(num_models)]
        for model in models:
            func.replace_all_batch_norm_modules_(model)
            model.train()
        params, self.buffers = func.stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")

        def loss(params, buffers, x, y):
            return F.cross_entropy(func.functional_call(base, (params, buffers), (x,)), y)

        self.grads = func.vmap(func.grad(loss), in_dims=(0, 0, None, None), randomness="different")
        holder = nn.Module()  # make_optimizer reads the recipe's hyperparameters from a module's parameters
        holder.params = nn.ParameterList(list(params.values()))
        self.params = dict(zip(params, holder.params))  # the tensors the optimizer steps
        self.optimizer = make_optimizer(name, holder)
        scales = torch.tensor(lr_scales or [1.0] * num_models, dtype=torch.float32)
        self.scales = {k: scales.view(-1, *([1] * (v.ndim - 1))) for k, v in self.params.items()}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        grads = self.grads(self.params, self.buffers, x, y)
        for key, param in self.params.items():
            param.grad = grads[key] * self.scales[key]
        self.optimizer.step()


def train_steps_per_second(name: str, batch_size: int, steps: int, *, warmup: int = 3, threads: int = 2,
                           seed: int = 0, repeats: int = 3, **model_kwargs) -> dict:
    """Training throughput of one seed (`ThroughputRunner`): `steps` timed steps after `warmup`,
    best and median of `repeats`. Returns images/s (wall) and images per CPU-second (process
    time, all threads), a measure that is robust to other processes sharing the cores."""
    runner = ThroughputRunner(name, batch_size, threads=threads, seed=seed, **model_kwargs)
    runner.steps(warmup)
    walls, cpus = zip(*(runner.steps(steps) for _ in range(repeats)))
    images_done = steps * batch_size
    return {"images_per_s": images_done / min(walls), "images_per_s_median": images_done / float(np.median(walls)),
            "images_per_cpu_s": images_done / float(np.median(cpus)), "threads": threads}


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet", choices=["lenet", "cnn_bn_dropout"])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, trained one after another")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--train_limit", type=int, default=0, help="first N training images (0 = all)")
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.model]
    epochs = args.epochs or recipe["epochs"]
    batch_size = args.batch_size or recipe["batch_size"]
    train_x, train_y, val_x, val_y = load_cifar(args.data_dir, args.train_limit)
    print(f"{args.model}: {len(train_y)} train / {len(val_y)} val images, batch {batch_size}, {epochs} epochs, "
          f"{args.threads} threads, torch {torch.__version__}", flush=True)
    accuracies, speeds = [], []
    for seed in range(args.seeds):
        model, seconds, seen = train_one_seed(args.model, seed, train_x, train_y, epochs, batch_size,
                                              log=lambda line: print(line, flush=True))
        accuracies.append(accuracy(model, val_x, val_y))
        speeds.append(seen / seconds)
        print(f"seed {seed}: val accuracy {100 * accuracies[-1]:.2f}%  {speeds[-1]:,.0f} images/s", flush=True)
    mean = float(np.mean(accuracies))
    std = float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0
    print(f"{args.model} over {args.seeds} seeds: val accuracy {100 * mean:.2f} +- {100 * std:.2f}% "
          f"(std over seeds), {np.mean(speeds):,.0f} training images/s per seed")
    result = {"model": args.model, "seeds": list(range(args.seeds)), "epochs": epochs, "batch_size": batch_size,
              "threads": args.threads, "train_images": int(len(train_y)), "val_images": int(len(val_y)),
              "val_accuracy": accuracies, "mean": mean, "std": std, "images_per_s": speeds,
              "torch": torch.__version__}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
