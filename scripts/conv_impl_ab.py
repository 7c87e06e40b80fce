"""Times one study-model cell of the benchmark with a chosen convolution form, so the CPU default
(patches x matmul) can be checked against XLA's own convolution in alternating processes:

    for i in 1 2; do for impl in patches xla; do python scripts/conv_impl_ab.py $impl cnn3 20; done; done

Prints best and median model-images/s over 3 timed rounds (cifar_jax only; the PyTorch side is
`scripts/benchmark.py --models`)."""

import argparse
import sys

import benchmark

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("conv_impl", choices=("patches", "winograd", "xla"))
PARSER.add_argument("model", choices=sorted(benchmark.MODELS))
PARSER.add_argument("batch_size", type=int)
PARSER.add_argument("--seeds", type=int, default=1)
PARSER.add_argument("--microbatches", type=int, default=0, help="execution.microbatches (0: auto)")


def main(argv: list[str]) -> None:
    args = PARSER.parse_args(argv)
    study_config = benchmark.jax_config

    def with_conv_impl(*config_args, **kwargs):
        config = study_config(*config_args, **kwargs)
        config.model.conv_impl = args.conv_impl
        config.execution.microbatches = args.microbatches
        return config
    benchmark.jax_config = with_conv_impl
    cell = benchmark.Cell(args.model, args.batch_size, args.seeds)
    steps = benchmark.timed_steps(args.model, args.batch_size, args.seeds, False, 1.0)
    auto = benchmark.jax_cell(cell, steps, 3, 0, True, {})["jax"]["auto"]
    print(f"{args.conv_impl} {args.model} b{args.batch_size} x{args.seeds} microbatches={args.microbatches or 'auto'}: {auto['images_per_s']:,.0f} model-img/s "
          f"best, {auto['images_per_s_median']:,.0f} median, {auto['images_per_cpu_s']:,.0f} per CPU-second")


if __name__ == "__main__":
    main(sys.argv[1:])
