"""Where one benchmark cell's training step spends its time: a `jax.profiler` trace of one timed
epoch of the cell's automatic program, its XLA ops summed over the CPU threads per step:

    python scripts/profile_cell.py mlp 100 1          # model, batch size, seeds
    python scripts/profile_cell.py cnn3 20 1 --top 15

An op's time is thread time: a matmul that uses both cores shows once, on the thread that ran it.
Look an op's name up in the optimized HLO (`XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`)."""

import argparse
import collections
import glob
import sys
import tempfile

import jax

import benchmark

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("model", choices=sorted(benchmark.MODELS))
PARSER.add_argument("batch_size", type=int)
PARSER.add_argument("seeds", type=int)
PARSER.add_argument("--top", type=int, default=25, help="ops to print")


def op_times(trace_dir: str) -> collections.Counter:
    """Nanoseconds per XLA op name over every runtime thread of the trace in `trace_dir`
    (Python frames, executor wrappers and thread-pool markers left out)."""
    profile = jax.profiler.ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
    times = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if not event.name.startswith(("$", "ThunkExecutor", "Threadpool", "SlinkyThreadPool", "end: ")):
                    times[event.name] += event.duration_ns
    return times


def main(argv: list[str]) -> None:
    args = PARSER.parse_args(argv)
    cell = benchmark.Cell(args.model, args.batch_size, args.seeds)
    steps = benchmark.timed_steps(args.model, args.batch_size, args.seeds, False, 0.5)
    images, labels = benchmark._synthetic(steps * args.batch_size, benchmark.image_shape(args.model))
    program = benchmark._TimedProgram(cell, (0, True, 0), images, labels)
    program.compile()
    program.warm_up()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            program.timed_epoch()
        times = op_times(trace_dir)
    wall_ms, rate = program.walls[-1] * 1e3 / steps, steps * args.batch_size * args.seeds / program.walls[-1]
    print(f"{cell.name}: {wall_ms:.2f} ms a step ({steps} steps, {rate:,.0f} model-img/s, profiler on); "
          f"ops {sum(times.values()) / 1e6 / steps:.2f} ms of thread time a step")
    for name, ns in times.most_common(args.top):
        print(f"{ns / 1e6 / steps:8.2f} ms  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
