"""Train or evaluate one experiment:

    python -m inception_jax.main --config configs/quickstart.py --workdir runs/quickstart
    python -m inception_jax.main --config configs/inception_v4.py --workdir runs/v4 --config.batch_size=256
    python -m inception_jax.main --config configs/quickstart.py --workdir runs/quickstart --config.mode=evaluate

--config defaults to the quickstart (inception_jax/quickstart.py, also named configs/quickstart.py): a small
Inception-ResNet-v2 on scikit-learn's digits, minutes on a laptop CPU, no download. Rerunning a command resumes from
the checkpoints in --workdir. Several processes (hosts): give each --coordinator_address, --num_processes and its
--process_id (or set JAX_COORDINATOR_ADDRESS). On the CPU the process first takes `inception_jax.cpu_settings` (XLA
flags, malloc tunables; `--nocpu_settings`: not).
"""

import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from inception_jax import cpu_settings
from inception_jax.data.source import BadImageError
from inception_jax.training import config as config_lib
from inception_jax.training import loop, sharding
from inception_jax.training.checkpoints import CheckpointError

# Exit codes of the faults a run explains in one line: 2 a bad or changed config (nothing was built), 3 a
# non-finite loss or gradient (nothing was saved after the last good checkpoint), 4 no checkpoint restores, 5 a
# bad input file.
EXIT_CODES = {
    config_lib.ConfigChangeError: 2,
    loop.NonFiniteError: 3,
    CheckpointError: 4,
    BadImageError: 5,
}
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py")  # installed with us



def _config_path(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return _DEFAULT_CONFIG


def _exit_on_unknown_override(error: Exception, argv: list[str]) -> None:
    """config_flags reports `--config.<unknown>=...` as a bare KeyError/AttributeError traceback; name the field."""
    import ml_collections

    try:
        config = config_lib.load_config_file(_config_path(argv))
    except Exception:  # the config file itself is broken: show the original error
        raise error from None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        field = arg[len("--config."):].split("=", 1)[0]
        node, parents = config, []
        for part in field.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = ", ".join(sorted(node)) if isinstance(node, ml_collections.ConfigDict) else "(not a section)"
                where = ".".join(parents) or "the config"
                sys.exit(f"error: config field {field} is unknown ({arg}); known fields of {where}: {known}")
            node, parents = node[part], [*parents, part]
    raise error


_FLAGS: dict[str, flags.FlagHolder] = {}


def define_flags(argv: list[str]) -> None:
    """Defines the command line's flags, once. Called by the entry point before parsing `argv`, never on import:
    config_flags reads the config file (and fails on an unknown `--config.<field>`, named from `argv`) as it defines
    the flag."""
    if _FLAGS:
        return
    try:
        _FLAGS["config"] = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file "
                                                           "(configs/*.py).", lock_config=True)  # fmt: skip
    except (AttributeError, KeyError, TypeError) as error:
        _exit_on_unknown_override(error, argv)
    _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots; resumed "
                                            "if present.", required=True)  # fmt: skip
    _FLAGS["coordinator_address"] = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for "
                                                        "multi-process runs.")  # fmt: skip
    _FLAGS["num_processes"] = flags.DEFINE_integer("num_processes", 0, "Number of processes of a multi-process run.")
    _FLAGS["process_id"] = flags.DEFINE_integer("process_id", -1, "This process's index in a multi-process run.")
    _FLAGS["compilation_cache"] = flags.DEFINE_string(
        "compilation_cache", os.path.expanduser("~/.cache/inception_jax/xla"),
        "Persistent XLA compilation cache ('' = off): resumed and repeated runs start faster.")  # fmt: skip


class _QuietLibraries(std_logging.Filter):
    """Keeps orbax's per-save INFO chatter (dozens of lines per checkpoint) off the console; warnings still show."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" in record.pathname:
            return record.levelno >= std_logging.WARNING and "did not provide metrics" not in record.getMessage()
        return True


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    cache = _FLAGS["compilation_cache"].value
    if cache and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    sharding.initialize_distributed(_FLAGS["coordinator_address"].value, _FLAGS["num_processes"].value,
                                    _FLAGS["process_id"].value)  # fmt: skip
    config, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
    logging.info("devices: %d (%s), processes: %d", jax.device_count(), jax.devices()[0].platform,
                 jax.process_count())
    try:  # a bad config fails here, naming the field, before anything is compiled
        experiment = loop.Experiment(config)  # validates the config and the model, opens the data set
    except (ValueError, BadImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if config.mode == "evaluate":
            results = loop.evaluate(config, workdir, experiment=experiment)
            print(f"step {results['step']}: top-1 {100 * results['top1']:.2f}%  top-5 {100 * results['top5']:.2f}%  "
                  f"({int(results['num_examples'])} examples{loop.statistics_note(results)})")
            return 0
        summary = loop.train_and_evaluate(config, workdir, experiment=experiment)
    except tuple(EXIT_CODES) as error:  # a fault with a one-line explanation (docs/faults.md), not a traceback
        print(f"error: {error}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES.items() if isinstance(error, kind))
    if jax.process_index() == 0:
        parts = [f"{config.model.name} on {config.dataset.name}: step {summary['step']}/{summary['total_steps']}"]
        if "eval_top1" in summary:
            recalibrated = loop.statistics_note({"bn_recalibration_batches": summary["eval_bn_recalibration_batches"]})
            parts.append(f"final top-1 {100 * summary['eval_top1']:.2f}%  top-5 {100 * summary['eval_top5']:.2f}%"
                         + (f" ({recalibrated[2:]})" if recalibrated else ""))
        if "images_per_sec" in summary:
            parts.append(f"{summary['images_per_sec']:.1f} images/s")
        parts.append(f"wall {summary['wall_seconds']:.0f} s")
        print("  ".join(parts))
        if summary.get("plot"):
            print(f"curves: {summary['plot']}  metrics: {os.path.join(workdir, 'metrics.jsonl')}")
    if summary["preempted"]:
        return 143  # 128 + SIGTERM: the run is not finished; the same command resumes it
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError) as error:
        _exit_on_unknown_override(error, argv)
        raise


if __name__ == "__main__":
    sys.argv = cpu_settings.apply(sys.argv)  # before jax starts its backends
    define_flags(sys.argv)
    app.run(main, flags_parser=_parse_flags)
