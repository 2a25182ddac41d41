"""The `frostline` command line: inspect, train, probe, demo, bench.

Keras is imported only once a command needs it, so that `--help` and `--version` start at
once and a backend that cannot start is one line, like every other error (see failures.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from frostline import _backend
from frostline.app.failures import (
    EXIT_BROKEN_PIPE, EXIT_CHECKPOINT, EXIT_INTERRUPTED, EXIT_STORAGE, CommandError, describe, one_line, resume_hint,
    storage_message,
)
from frostline.errors import CheckpointError, ConfigError, FrostlineError, PlanError

if TYPE_CHECKING:
    import keras

    from frostline.inspect.report import Report
    from frostline.plan.plan import Plan

__all__ = ["main"]

DEBUG_VARIABLE = "FROSTLINE_DEBUG"


def _load_model(path: str) -> keras.Model:
    if not os.path.exists(path):
        raise CommandError(f"model file not found: {path!r}")
    if os.path.isdir(path):
        raise CommandError(f"expected a .keras model file, received a directory: {path!r}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise CommandError(
            f"{path!r} is not a Keras model: a .keras file is a zip archive written by "
            "model.save(), and this file is not one"
        )
    import keras

    try:
        return keras.saving.load_model(path)
    except Exception as e:  # any failure to load means: not a model we can read
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CommandError(f"{path!r} is not a readable Keras model (.keras file): {reason}") from None


def _load_plan(path: str) -> Plan:
    from frostline.plan.plan import Plan

    if not os.path.isfile(path):
        raise CommandError(f"plan file not found: {path!r}")
    try:
        return Plan.from_yaml(os.fspath(os.path.abspath(path)))
    except PlanError as e:
        raise CommandError(f"{path}: {e}") from None


def _state_label(row) -> str:
    return f"partial ({row.trainable_params:,} of {row.params:,})" if row.state == "partial" else row.state


def _differences(plain: Report, stored: Report) -> list[dict[str, str]]:
    """Per layer (containers left out: theirs follow from their layers), each of state,
    mode, learning-rate multiplier and adapters where the stored state and plain Keras differ."""
    plain_rows = {row.path: row for row in plain.rows}
    rows = stored.rows
    out = []
    for i, row in enumerate(rows):
        other = plain_rows.get(row.path)
        if other is None or (i + 1 < len(rows) and rows[i + 1].depth > row.depth):
            continue
        for what, stored_value, plain_value in (
            ("state", _state_label(row), _state_label(other)), ("mode", row.mode, other.mode),
            ("lr", row.lr, other.lr), ("lora", row.lora, other.lora),
        ):
            if stored_value != plain_value:
                out.append({"what": what, "layer": row.path, "stored": stored_value, "plain_keras": plain_value})
    return out


def _collapsed(differences: list[dict[str, str]], depth: int) -> list[dict[str, str]]:
    """The differences with the layers below `depth` counted under their container at that
    depth, one row per container and kind of difference."""
    groups: dict[tuple, int] = {}
    for d in differences:
        parts = d["layer"].split("/")
        key = (d["what"], "/".join(parts[:depth]), d["stored"], d["plain_keras"], len(parts) > depth)
        groups[key] = groups.get(key, 0) + 1
    return [{"what": what, "layer": prefix + (f"/* ({n} layer{'s' * (n > 1)})" if deeper else ""),
             "stored": stored, "plain_keras": plain}
            for (what, prefix, stored, plain, deeper), n in groups.items()]


def _fitting(differences: list[dict[str, str]], rows: int = 20) -> list[dict[str, str]]:
    """The table's rows: collapsed to the deepest depth at which at most `rows` rows remain
    (one layer per row for a few differences)."""
    deepest = max((d["layer"].count("/") + 1 for d in differences), default=1)
    best = _collapsed(differences, 1)
    for level in range(2, deepest + 1):
        candidate = _collapsed(differences, level)
        if len(candidate) > rows:
            break
        best = candidate
    return best


def _table(differences: list[dict[str, str]]) -> list[str]:
    header = {"what": "what", "layer": "layer", "stored": "stored in the file", "plain_keras": "plain Keras loads"}
    rows = [header] + differences
    widths = {key: max(len(row[key]) for row in rows) for key in header}
    return ["  " + "  ".join(row[key].ljust(widths[key]) for key in header).rstrip() for row in rows]


def _restore_stored_state(model: keras.Model, path: str) -> tuple[str, list[str], dict[str, Any]] | None:
    """Restores the frostline state stored in the file (warnings to stderr). Returns, for a
    file that stores one, a line saying so, the table of where plain Keras differs (deep
    layers counted under their container where there are many; see `_fitting`), and every
    difference as data; None for a file without one."""
    from frostline.apply.loading import restore_state
    from frostline.inspect.report import report
    from frostline.inspect.saving import read_stored_state

    try:
        state = read_stored_state(path)
    except FrostlineError as e:
        raise CommandError(str(e)) from None
    if state is None:
        return None
    plain = report(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        restore_state(model, state, source=path)
    for warning in caught:
        print(f"frostline inspect: warning: {warning.message}", file=sys.stderr)
    stored = report(model)
    differences = _differences(plain, stored)
    data = {"totals": plain.to_dict()["totals"], "differences": differences}
    if not differences:
        line = ("stored frostline state: restored; plain keras.saving.load_model gives the same frozen set, "
                "modes, learning-rate multipliers and adapters")
        return line, [], data
    other_modes = any(d["what"] == "mode" for d in differences)
    line = (f"stored frostline state: restored; plain keras.saving.load_model would give {plain.totals_line}"
            + (" (and other modes)" if other_modes else "") + ", and differs here:")
    return line, _table(_fitting(differences)), data


def _inspect(args: argparse.Namespace) -> int:
    _backend.import_keras()
    plan = _load_plan(args.plan) if args.plan else None
    from frostline.apply.apply import apply
    from frostline.inspect.report import report

    model = _load_model(args.model)
    stored = _restore_stored_state(model, args.model)
    result: Report
    if plan is None:
        result = report(model)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", message=r"Rule \d+ ", category=UserWarning)
            try:
                result = apply(model, plan, strict=not args.lenient)
            except PlanError as e:
                raise CommandError(f"{args.plan}: {e}") from None
        for warning in caught:
            print(f"frostline inspect: warning: {warning.message}", file=sys.stderr)
    if args.json:
        extra = {"stored_state": stored and stored[0], "plain_keras": stored and stored[2]}
        print(json.dumps(result.to_dict() | extra, indent=2))
    else:
        print(result.to_string(max_depth=args.depth))
        if stored:
            print("\n".join([stored[0], *stored[1]]))
    return 0


def _train(args: argparse.Namespace) -> int:
    from frostline.app.config import load_config

    try:  # before Keras starts: a mistake there is reported at once
        config = load_config(args.config)
    except ConfigError as e:
        raise CommandError(f"{args.config}: {e}") from None
    _backend.import_keras()
    from frostline.app.train_job import run_training

    checkpoints = os.path.join(config.output, "checkpoints")
    try:
        files = run_training(config, resume=args.resume, verbose=0 if args.quiet else "auto")
    except ConfigError as e:
        raise CommandError(f"{args.config}: {e}") from None
    except CheckpointError as e:
        raise CommandError(f"{args.config}: {e}", EXIT_CHECKPOINT) from None
    except KeyboardInterrupt:
        raise _Interrupted(f"interrupted {resume_hint(checkpoints)}") from None
    except OSError as e:  # fl.StorageError too: the phase was undone, its checkpoints are intact
        if isinstance(e, FileNotFoundError):
            raise
        raise CommandError(f"{storage_message(e, config.output)} The run stopped {resume_hint(checkpoints)}.", EXIT_STORAGE) from e
    print(f"wrote {config.output}: " + ", ".join(os.path.basename(p) for p in files.values()))
    return 0


def _probe(args: argparse.Namespace) -> int:
    from frostline.app.probe_job import command  # imports Keras once the config is checked
    return command(args)


def _demo(args: argparse.Namespace) -> int:
    _backend.import_keras()
    from frostline.app.demo import run_demo

    try:
        result = run_demo(args.out, seed=args.seed, seeds=args.seeds, labels_per_class=args.labels_per_class,
                          quick=args.quick)
    except ValueError as e:
        raise CommandError(f"{'--seeds' if 'seeds' in str(e) else '--labels-per-class'}: {e}") from None
    print(result.summary_line())
    return 0


def _bench(args: argparse.Namespace) -> int:
    if {"-h", "--help"} & set(args.rest):  # answered without Keras
        from frostline.app.bench_args import cache_parser, memory_parser

        (memory_parser() if args.what == "memory" else cache_parser()).parse_args(args.rest)
    _backend.import_keras()
    from frostline.app.bench import main as bench_main, memory_main

    return memory_main(args.rest) if args.what == "memory" else bench_main(args.rest)


class _Interrupted(Exception):
    """Ctrl-C, with what the command had done by then."""


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a depth of 0 or more, received {text!r}")
    return value


class _Version(argparse.Action):
    """`--version`: frostline's version and Keras's, read from the installed packages
    (importing Keras to ask would take seconds)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print frostline's and Keras's versions and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import importlib.metadata

        def installed(name: str) -> str:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                return "not installed"

        print(f"frostline {installed('frostline')} (keras {installed('keras')})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `frostline` command."""
    parser = argparse.ArgumentParser(
        prog="frostline",
        description="Transfer learning for Keras 3: see and plan what is frozen.",
        epilog=f"Exit codes and errors: docs/cli.md. --debug (or {DEBUG_VARIABLE}=1) shows a traceback.",
    )
    parser.add_argument("--version", action=_Version)
    debug = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect", parents=[debug],
        help="print what is frozen in a saved model, optionally after a plan",
        description="Load MODEL, restore the frostline state it stores, apply PLAN in memory "
        "if given (the file is never written), and print the report.",
    )
    inspect.add_argument("model", metavar="MODEL.keras", help="a model saved with model.save()")
    inspect.add_argument("--plan", metavar="PLAN.yaml", help="a plan to apply in memory")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument(
        "--depth", type=_depth, default=None, metavar="N",
        help="show layers down to depth N (0 is the model); deeper ones still count",
    )
    inspect.add_argument(
        "--lenient", action="store_true",
        help="a selector that matches nothing is a warning, not an error",
    )
    inspect.set_defaults(handler=_inspect)

    train = commands.add_parser(
        "train", parents=[debug],
        help="fine-tune in phases as a YAML config says",
        description="Validate CONFIG (nothing runs or is written if anything is wrong), "
        "then run its phases and write the output folder: model.keras, config.yaml, "
        "history.csv, report.md, history.png, frostline.png and checkpoints/. "
        "Ctrl-C stops after undoing the phase it is in; --resume continues from the last checkpoint.",
    )
    train.add_argument("config", metavar="CONFIG.yaml")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

    from frostline.app.probe_config import DESCRIPTION, HELP

    probe = commands.add_parser("probe", parents=[debug], help=HELP, description=DESCRIPTION)
    probe.add_argument("config", metavar="CONFIG.yaml")
    probe.set_defaults(handler=_probe)

    demo = commands.add_parser(
        "demo", parents=[debug],
        help="pretrain on digits 0-4, transfer to 5-9 with few labels, compare with scratch",
        description="Runs from nothing on the CPU: no download. Writes report.md, history.png, "
        "frostline.png and model.keras to --out. The last line printed is machine-readable.",
    )
    demo.add_argument("--out", default="frostline-demo", help="output folder (default: frostline-demo)")
    demo.add_argument("--seed", type=int, default=0, help="the first random seed (default: 0)")
    demo.add_argument("--seeds", type=int, default=4, help="seeds to run and average over, from --seed (default: 4)")
    demo.add_argument("--labels-per-class", type=int, default=10, help="labels per digit (default: 10)")
    demo.add_argument("--quick", action="store_true", help="fewer epochs, for a smoke test")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser(
        "bench", help="benchmarks: bench cache|memory [flags]",
        description="The benchmarks of docs/performance.md; 'frostline bench cache --help' and "
        "'frostline bench memory --help' list their flags.",
    )
    kinds = bench.add_subparsers(dest="what", required=True, metavar="BENCHMARK")
    for name, text in (("cache", "the activation cache against plain Keras"),
                       ("memory", "a disk cache's peak memory against plain Keras")):
        # Its flags, --help too, are the benchmark's own: main passes them on as they are.
        kinds.add_parser(name, help=text, add_help=False).set_defaults(handler=_bench)
    return parser


def _debugging(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `frostline` command; returns its exit code.

    Args:
        argv: The arguments, without the program name. Defaults to `sys.argv[1:]`.
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    prefix = f"frostline {args.command}"
    try:
        return args.handler(args)
    except BrokenPipeError:  # stdout's reader went away (`| head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exit's flush is quiet too
        return EXIT_BROKEN_PIPE
    except (KeyboardInterrupt, _Interrupted) as e:
        if _debugging(args):
            traceback.print_exception(e)
        print(f"{prefix}: {e if isinstance(e, _Interrupted) else 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        failure = describe(e)
        if _debugging(args):
            # A CommandError says what its cause said in a line: the traceback is the cause's.
            cause = (e.__cause__ or e.__context__) if isinstance(e, CommandError) else None
            traceback.print_exception(cause or e)
        print(f"{prefix}: error: {one_line(str(failure))}", file=sys.stderr)
        return failure.code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
