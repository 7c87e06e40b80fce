"""Command-line entry point: `cifar-jax` or `python -m cifar_jax.main --config configs/x.py [--workdir DIR] [--mode ...]`.

Only parses flags and dispatches; every mistake the user can fix ends in one `error:` line. jax,
Flax and TensorFlow are imported only once the command line is valid, so a mistyped flag or config
file is reported in about a second, not after seconds of library start-up.
"""

import sys
from pathlib import Path

from cifar_jax.cli import quiet

quiet.configure(sys.argv)  # before jax, TensorFlow and absl load: their C++ loggers read it once

import ast  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
from typing import Any  # noqa: E402

import ml_collections  # noqa: E402
from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cifar_jax.job import dev_run  # noqa: E402
from cifar_jax.job import storage  # noqa: E402
from cifar_jax.job import workdir as workdir_lib  # noqa: E402
from cifar_jax.errors import CifarJaxError, ConfigError, Interrupted, UsageError  # noqa: E402



def make_flags(argv: list[str]) -> flags.FlagValues:
    """A fresh set of this program's flags for `argv`: no state survives between calls of `cli`
    (ml_collections defines the --config.* override flags it finds in `argv`)."""
    # ml_collections loads a config file into sys.modules['config_config'], re-executing into an
    # existing entry: a file without get_config() would inherit the previous file's.
    sys.modules.pop("config_config", None)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "Config file (configs/*.py[:arg]); override fields with --config.a.b=v. With "
        "--mode=eval it defaults to the workdir's own config.", flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results (default: runs/<config "
                        "file name>[_<argument>]).", flag_values=values)
    flags.DEFINE_enum("mode", "train", ["train", "eval", "sweep", "study", "report"],
                      "train (or resume); eval a checkpoint of --workdir; sweep the config's `sweep` spec; study: "
                      "every experiment of a study config (configs/studies/) and its report.md; report: rebuild a "
                      "study's report.md or a sweep's results.md.",
                      flag_values=values)
    flags.DEFINE_integer("verbosity", -1, "1 or more: keep TensorFlow/absl/XLA start-up logs and library warnings "
                         "(debugging an installation).", short_name="v", flag_values=values)
    flags.DEFINE_boolean("help", False, "Show this help.", short_name="h", flag_values=values)
    return values


MAX_ERROR_CHARS = 300
# Loads a workdir's own config.json (its module imports the training stack, so only its path here).
WORKDIR_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workdir_config.py")
_GRID_FLAG = re.compile(r"--config\.hparam_grid\.(\w+)(?:=(.*))?$", re.DOTALL)
_DID_YOU_MEAN = re.compile(r"""Did you mean ["']?([\w.]+)["']? instead""")


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def with_workdir_config(argv: list[str]) -> list[str]:
    """For `--mode=eval` without `--config`, reads the config the workdir was trained with."""
    workdir = _flag_value(argv, "workdir")
    if _flag_value(argv, "mode") != "eval" or _flag_value(argv, "config") is not None:
        return argv
    if workdir is None and not {"--help", "-h"} & set(argv):
        raise UsageError("--mode=eval needs --workdir (the run to evaluate), e.g. --workdir runs/test")
    return argv if workdir is None else [argv[0], f"--config={WORKDIR_CONFIG_FILE}:{workdir}", *argv[1:]]


def split_grid_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Takes `--config.hparam_grid.NAME=VALUES` out of `argv`: ml_collections refuses new keys in
    the (empty) hparam_grid, so `main` sets them after the config file is loaded."""
    rest, grid = [], {}
    args = iter(argv)
    for arg in args:
        match = _GRID_FLAG.match(arg)
        if match is None:
            rest.append(arg)
        else:
            grid[match.group(1)] = match.group(2) if match.group(2) is not None else next(args, "")
    return rest, grid


def apply_grid(config: ml_collections.ConfigDict, grid: dict[str, str]) -> None:
    """Sets `config.hparam_grid.NAME` from a tuple literal such as '(0.1, 0.01)'."""
    from cifar_jax.core import runs

    for name, text in grid.items():
        flag = f"--config.hparam_grid.{name}"
        if name not in runs.TRACED_HPARAMS:
            raise ConfigError(f"{flag}: not a traced hyperparameter; choose from {', '.join(runs.TRACED_HPARAMS)} "
                              "(other fields are swept with --mode=sweep and a config file)")
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values = None
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = (values,)
        if not isinstance(values, (tuple, list)) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{flag}={text!r} must be a tuple of numbers, e.g. {flag}='(0.1, 0.01)'")
        with config.hparam_grid.unlocked():
            config.hparam_grid[name] = tuple(float(v) for v in values)


def config_package_on_path(config_flag: str | None) -> None:
    """Config files import their siblings (`from configs import default`); loaded by path from any
    working directory (the `cifar-jax` script), they find them because the directory holding their
    `configs` package goes on sys.path here, once, instead of in every config file."""
    if not config_flag:
        return
    path = Path(config_flag.split(":", 1)[0]).resolve()
    for parent in path.parents:
        if parent.name == "configs" and (parent / "__init__.py").exists():
            if str(parent.parent) not in sys.path:
                sys.path.insert(0, str(parent.parent))
            return


def parse(argv: list[str]) -> tuple[ml_collections.ConfigDict, str, str, int] | None:
    """(config, workdir, mode, verbosity) from the command line, with grid flags and dev_run
    applied; None after printing --help."""
    argv, grid = split_grid_flags(with_workdir_config(argv))
    config_package_on_path(_flag_value(argv, "config"))
    values = make_flags(argv)
    try:
        extra = values(argv)
    except flags.Error as error:
        raise UsageError(_flag_error(error)) from None
    except Exception as error:  # noqa: BLE001 -- the config file, or an override of it, failed to load
        raise ConfigError(_config_error(error, argv)) from None
    if values.help:
        print(f"usage: cifar-jax --config FILE[:ARG] [--workdir DIR] [--mode=train|eval|sweep|study|report] "
              f"[--config.a.b=v]\n"
              f"{values.get_help(include_special_flags=False)}")
        return None
    if len(extra) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(extra[1:])}; flags are --name=value")
    config = load_config(values, argv)
    apply_grid(config, grid)
    if config.get("dev_run", False) and values.mode != "eval":  # eval restores the trained runs as they are
        config = dev_run.apply_dev_run(config)
    workdir = values.workdir
    if workdir is None:
        workdir = default_workdir(_flag_value(argv, "config") or "")
        print(f"workdir: {workdir} (the default for this config; choose another with --workdir)", flush=True)
    return config, workdir, values.mode, values.verbosity


def default_workdir(config_flag: str) -> str:
    """runs/<config file name>[_<argument>], relative to the working directory: where a job
    goes when --workdir is not given (configs/block_cnn.py -> runs/block_cnn)."""
    path, _, argument = config_flag.partition(":")
    name = Path(path).stem + (f"_{argument}" if argument else "")
    return os.path.join("runs", re.sub(r"[^\w.-]+", "_", name))


def load_config(values: flags.FlagValues, argv: list[str]) -> ml_collections.ConfigDict:
    """The --config value; ml_collections defers a config file's IOError to this first access."""
    try:
        config = values.config
        if config is not None:
            config.keys()  # a file that failed to load is a placeholder that raises on any access
    except Exception as error:  # noqa: BLE001 -- a user's config file can fail in any way
        raise ConfigError(_config_error(error, argv)) from None
    if config is None:
        raise UsageError(f"--config is required for --mode={values.mode}; e.g. --config configs/test.py")
    return config


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from or during, outermost first."""
    chain = [error]
    while chain[-1].__cause__ is not None or (chain[-1].__context__ is not None
                                              and not chain[-1].__suppress_context__):
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def _config_error(error: BaseException, argv: list[str]) -> str:
    """One line for a config file that cannot be loaded or an override that names no field."""
    chain = _chain(error)
    cause = chain[-1]
    path = (_flag_value(argv, "config") or "").split(":", 1)[0]
    if isinstance(cause, CifarJaxError):
        return str(cause)
    if path and not os.path.isfile(path):
        return f"--config {path}: no such file; the study configs are in configs/ and configs/sweeps/"
    if isinstance(cause, SyntaxError):
        return f"--config {cause.filename or path} line {cause.lineno}: {cause.msg}; fix the file"
    if isinstance(cause, AttributeError) and "get_config" in str(cause):
        return f"--config {path}: defines no get_config(); a config file returns its ConfigDict from get_config()"
    if isinstance(cause, (AttributeError, KeyError)):
        return _missing_field([str(e.args[0]) if e.args else str(e) for e in chain], argv)
    return f"--config {path}: {type(cause).__name__}: {cause}"


def _missing_field(texts: list[str], argv: list[str]) -> str:
    """'--config.num_seed: no such field; did you mean num_seeds?' from ml_collections' KeyErrors."""
    name = texts[-1].strip("'\"")
    flag = next((arg.split("=", 1)[0] for arg in argv
                 if re.match(rf"--config\.([\w.]+\.)?{re.escape(name)}(=|\.|$)", arg)), f"--config.{name}")
    suggestions = [match.group(1) for match in map(_DID_YOU_MEAN.search, texts) if match]
    section = flag.removeprefix("--config.").rpartition(".")[0]
    hint = (f"did you mean {section + '.' if section else ''}{suggestions[0]}?" if suggestions
            else "the fields are in configs/default.py and the study config")
    return f"{flag}: no such field; {hint}"


def _flag_error(error: flags.Error) -> str:
    """The informative line of absl's (often multi-line) flag error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Traceback" in str(error):
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(error).__name__


def dispatch(config: ml_collections.ConfigDict, workdir: str, mode: str) -> Any:
    """Runs `mode` holding the workdir's lock, so no second process writes into it meanwhile.
    Each mode imports what it needs: studies and sweeps bring scipy.stats (~1 s a process)."""
    from cifar_jax.core import execution

    storage.check_workdir(workdir)
    execution.apply_xla_flags(config)  # before anything touches a JAX backend
    execution.initialize_distributed(config)
    execution.enable_compilation_cache(workdir)
    if mode == "sweep":  # several workers may share a sweep's workdir: each group is locked instead
        from cifar_jax.experiments import sweep
        return sweep.run_sweep(config, workdir)
    if mode == "report":  # reads what has finished, also while a study or sweep is running in the workdir
        from cifar_jax.experiments import study, sweep
        if config.get("experiments"):
            path = study.write_study_report(config, workdir)
            print(f"study: {path}", flush=True)
            return path
        if config.get("sweep"):
            return sweep.write_sweep_report(workdir, tensorboard=bool(config.get("tensorboard", True)))
        raise UsageError("--mode=report rebuilds a study's report.md or a sweep's results.md; give the study "
                         "config (configs/studies/) or the sweep config (configs/sweeps/) the workdir was run with")
    # Taken by process 0 alone; a refusal (another job holds it) ends every process with its line.
    with execution.on_primary(workdir_lib.workdir_lock(workdir, create=mode != "eval")):
        if mode == "train":
            from cifar_jax.job import train
            return train.train_and_evaluate(config, workdir)
        if mode == "study":
            from cifar_jax.experiments import study
            return study.run_study(config, workdir)
        from cifar_jax.job import evaluation
        return evaluation.run_eval(config, workdir)


def error_line(message: str) -> str:
    """A user error as one `error:` line of at most MAX_ERROR_CHARS characters; several problems
    reported at once (one per line) are joined with '; ', as many whole ones as fit, then how many
    more there are (never a problem cut in the middle: the rerun reports the rest)."""
    problems = [" ".join(line.split()) for line in str(message).splitlines() if line.strip()] or [""]

    def more(count: int) -> str:
        return f" (+{count} more problem{'s' if count > 1 else ''}: fix these and rerun to see them)" if count else ""
    for shown in range(len(problems), 0, -1):
        text = "error: " + "; ".join(problems[:shown])
        if len(text) + len(more(len(problems) - shown)) <= MAX_ERROR_CHARS:
            return text + more(len(problems) - shown)
    tail = "..." + more(len(problems) - 1)
    return text[: MAX_ERROR_CHARS - len(tail)] + tail


def cli(argv: list[str]) -> int:
    """Parses `argv` (argv[0] is the program), runs it and returns the exit status.

    Repeatable in one process (every call parses into fresh flags), so tests can drive many
    command lines without paying a jax + TensorFlow import each.
    """
    parsed = None
    try:
        parsed = parse(argv)
        if parsed is None:
            return 0
        config, workdir, mode, verbosity = parsed
        logging.set_verbosity(verbosity if verbosity >= quiet.VERBOSE_LEVEL else
                              logging.ERROR if quiet.active else logging.WARNING)
        dispatch(config, workdir, mode)
    except Interrupted as stopped:  # a checkpoint was saved: say how to resume, with a status a job script tests
        print(str(stopped), file=sys.stderr, flush=True)
        return stopped.exit_code
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C that would not wait for the save
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr, flush=True)
        return 130
    except CifarJaxError as error:
        print(error_line(str(error)), file=sys.stderr, flush=True)
        return 1
    except FileNotFoundError as error:
        if not _removed_under_the_job(error, parsed[1] if parsed else None):
            raise
        print(error_line(f"{os.path.dirname(error.filename)} was removed while the job wrote into it; "
                         "rerun the same command: what is left of the workdir is resumed or started afresh"),
              file=sys.stderr, flush=True)
        return 1
    return 0


def _removed_under_the_job(error: FileNotFoundError, workdir: str | None) -> bool:
    """Whether `error` is a write into a directory of the workdir that someone deleted meanwhile."""
    folder = os.path.dirname(str(error.filename or ""))
    if not (workdir and folder) or storage.is_remote(workdir) or os.path.isdir(folder):
        return False
    root = os.path.abspath(workdir)
    return os.path.commonpath([os.path.abspath(folder), root]) == root


def run() -> None:
    """Console entry point (`cifar-jax`); also what `python -m cifar_jax.main` runs."""
    sys.exit(cli(sys.argv))


if __name__ == "__main__":
    run()
