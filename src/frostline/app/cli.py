"""The `frostline` command line: inspect, train, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
import zipfile
from collections.abc import Sequence

import keras

from frostline.apply.apply import apply
from frostline.apply.loading import restore_state
from frostline.errors import FrostlineError, PlanError
from frostline.inspect.saving import read_stored_state
from frostline.plan.plan import Plan
from frostline.inspect.report import Report, report

__all__ = ["main"]


class CommandError(Exception):
    """An error reported as one line on stderr with exit code 2."""


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
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # any failure to load means: not a model we can read
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CommandError(f"{path!r} is not a readable Keras model (.keras file): {reason}") from None


def _load_plan(path: str) -> Plan:
    if not os.path.isfile(path):
        raise CommandError(f"plan file not found: {path!r}")
    try:
        return Plan.from_yaml(os.fspath(os.path.abspath(path)))
    except PlanError as e:
        raise CommandError(f"{path}: {e}") from None


def _restore_stored_state(model: keras.Model, path: str) -> str | None:
    """Restores the frostline state stored in the file (warnings to stderr); returns a line
    comparing it with what plain Keras loads, or None when the file stores none."""
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
    if (plain.trainable_params, [r.mode for r in plain.rows]) == (stored.trainable_params, [r.mode for r in stored.rows]):
        return "stored frostline state: restored; plain keras.saving.load_model gives the same frozen set and modes"
    return (f"stored frostline state: restored; plain keras.saving.load_model would give {plain.totals_line}"
            + (" (and other modes)" if [r.mode for r in plain.rows] != [r.mode for r in stored.rows] else ""))


def _inspect(args: argparse.Namespace) -> int:
    plan = _load_plan(args.plan) if args.plan else None
    model = _load_model(args.model)
    stored_line = _restore_stored_state(model, args.model)
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
        print(json.dumps(result.to_dict() | {"stored_state": stored_line}, indent=2))
    else:
        print(result.to_string(max_depth=args.depth))
        if stored_line:
            print(stored_line)
    return 0


def _train(args: argparse.Namespace) -> int:
    from frostline.errors import CheckpointError
    from frostline.app.config import ConfigError, load_config
    from frostline.app.train_job import run_training

    try:
        config = load_config(args.config)
        files = run_training(config, resume=args.resume, verbose=0 if args.quiet else "auto")
    except (ConfigError, CheckpointError) as e:
        raise CommandError(f"{args.config}: {e}") from None
    print(f"wrote {config.output}: " + ", ".join(os.path.basename(p) for p in files.values()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from frostline.app.demo import run_demo

    try:
        result = run_demo(args.out, seed=args.seed, labels_per_class=args.labels_per_class, quick=args.quick)
    except ValueError as e:
        raise CommandError(f"--labels-per-class: {e}") from None
    print(result.summary_line())
    return 0


def _bench(args: argparse.Namespace) -> int:
    from frostline.app.bench import main as bench_main, memory_main

    if args.what == "memory":
        return memory_main(args.rest)
    return bench_main(args.rest)


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a depth of 0 or more, received {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `frostline` command."""
    parser = argparse.ArgumentParser(
        prog="frostline",
        description="Transfer learning for Keras 3: see and plan what is frozen.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect",
        help="print what is frozen in a saved model, optionally after a plan",
        description="Load MODEL, apply PLAN in memory if given (the file is never "
        "written), and print the report.",
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
        "train",
        help="fine-tune in phases as a YAML config says",
        description="Validate CONFIG (nothing runs or is written if anything is wrong), "
        "then run its phases and write the output folder: model.keras, config.yaml, "
        "history.csv, report.md, history.png, frostline.png and checkpoints/.",
    )
    train.add_argument("config", metavar="CONFIG.yaml")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

    demo = commands.add_parser(
        "demo",
        help="pretrain on digits 0-4, transfer to 5-9 with few labels, compare with scratch",
        description="Runs from nothing on the CPU: no download. Writes report.md, history.png, "
        "frostline.png and model.keras to --out. The last line printed is machine-readable.",
    )
    demo.add_argument("--out", default="frostline-demo", help="output folder (default: frostline-demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--labels-per-class", type=int, default=10, help="labels per digit (default: 10)")
    demo.add_argument("--quick", action="store_true", help="fewer epochs, for a smoke test")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser("bench", help="benchmarks: bench cache|memory [flags]", add_help=False)
    bench.add_argument("what", choices=["cache", "memory"],
                       help="cache: the activation cache against plain Keras; memory: a disk cache's peak memory")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `frostline` command; returns its exit code.

    Args:
        argv: The arguments, without the program name. Defaults to `sys.argv[1:]`.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as e:
        message = " ".join(str(e).split())  # one line, whatever the cause wrote
        print(f"frostline {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
