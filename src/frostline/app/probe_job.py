"""The `frostline probe` job: a `frostline train` configuration in; a linear probe at every
cut of its model, and the fine-tuning schedule the probe implies, out.

The model and the data are those `frostline train` builds and reads (`train_job`), checked
the same way before anything runs; then `fl.probe` scores a linear head at each cut on the
validation data and `fl.schedules.from_probe` turns the best cut into phases. The output
folder gets probe.md, probe.png, probe.json, phases.yaml (the phases, as a config's
`phases:`) and train.yaml (the configuration with those phases, its output
`OUTPUT/train`), so that `frostline train OUTPUT/train.yaml` runs the schedule.

Keras is imported only by `run_probe`: `command` reports a configuration's YAML, key, type
and file mistakes before Keras starts, as `frostline train` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

import yaml

from frostline.app.config import load_config
from frostline.app.probe_config import ProbeSpec, check_validation_data
from frostline.errors import ConfigError

if TYPE_CHECKING:
    import argparse

    from frostline.app.config import TrainConfig
    from frostline.train.phase import Phase
    from frostline.train.probe_result import ProbeResult

__all__ = ["FILES", "ProbeOutcome", "command", "run_probe", "schedule_yaml"]

FILES = ("probe.md", "probe.png", "probe.json", "phases.yaml", "train.yaml")
TRAIN_OUTPUT = "train"  # the folder under the output that train.yaml's run writes


@dataclasses.dataclass
class ProbeOutcome:
    """What `run_probe` measured and wrote."""

    result: ProbeResult
    phases: list[Phase]
    files: dict[str, str]  # file name -> path
    seconds: float  # of fl.probe


def load_probe_config(path: str | os.PathLike[str]) -> tuple[TrainConfig, ProbeSpec]:
    """The configuration, checked as `frostline train` checks it (`config.load_config`),
    and its `probe:` section (the defaults if it has none). `phases:` may be left out: the
    probe writes its own (a stand-in phase that plans nothing is checked meanwhile)."""
    config = load_config(path, default_phases=[{"name": "probe", "epochs": 1}])
    spec = getattr(config, "probe", None)
    return config, spec if spec is not None else ProbeSpec()


def command(args: argparse.Namespace) -> int:
    """`frostline probe CONFIG.yaml`: prints the table, the best cut and the schedule, and
    writes the output folder. Raises CommandError (exit code 2) for a configuration that
    cannot run, before anything is written."""
    from frostline import _backend
    from frostline.app.failures import EXIT_STORAGE, CommandError, storage_message

    try:  # before Keras starts
        config, spec = load_probe_config(args.config)
        check_validation_data(config)
    except ConfigError as e:
        raise CommandError(f"{args.config}: {e}") from None
    _backend.import_keras()
    try:
        outcome = run_probe(config, spec)
    except ConfigError as e:
        raise CommandError(f"{args.config}: {e}") from None
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CommandError(storage_message(e, config.output), EXIT_STORAGE) from e
    print(summary(outcome, config))
    return 0


def summary(outcome: ProbeOutcome, config: TrainConfig) -> str:
    """What the command prints: the table, the best cut, the schedule and the files."""
    result, best = outcome.result, outcome.result.best
    seconds = result.seconds
    lines = [
        f"probe of {result.model!r}: {_plural(len(result.rows), 'cut')}, {result.train_samples} training and "
        f"{_plural(result.validation_samples, 'validation sample')}, linear heads {_plural(result.epochs, 'epoch')} "
        f"({outcome.seconds:.1f} s: pass {seconds['pass']:.1f} s, heads {seconds['heads']:.1f} s)",
        "",
        str(result),
        "",
        f"best cut: {best['cut']} ({result.metric} {best['score']:.3f}; freezes {', '.join(best['freeze'])}: "
        f"{best['frozen_params']:,} parameters, {best['frozen_fraction']:.0%})",
        "schedule: " + " -> ".join(_phase_text(p) for p in outcome.phases),
        f"wrote {config.output}: " + ", ".join(outcome.files),
        f"next: frostline train {outcome.files['train.yaml']}",
    ]
    return "\n".join(lines)


def _plural(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _phase_text(phase: Phase) -> str:
    return f"{phase.name} ({_plural(phase.epochs, 'epoch')}, learning rate {phase.learning_rate:g}: {_plan_text(phase)})"


def _plan_text(phase: Phase) -> str:
    return "; ".join(rule.describe() for rule in phase.plan.rules)


def _phase_config(phase: Phase) -> dict[str, Any]:
    """A phase as the `phases:` of a configuration take it."""
    return {"name": phase.name, "epochs": phase.epochs, "learning_rate": phase.learning_rate,
            "plan": phase.plan.get_config()}


def schedule_yaml(phases: list[Phase]) -> str:
    """The phases as YAML: a mapping with the key `phases`, as in a configuration."""
    return yaml.safe_dump({"phases": [_phase_config(p) for p in phases]}, sort_keys=False)


def _cut_error(error: Exception, cuts: Any) -> ConfigError:
    """A cut that cannot be probed, named by its place in `probe.cuts`."""
    where = "probe.cuts"
    m = re.match(r"Cut '(.*?)' ", str(error))
    if m and not isinstance(cuts, str) and m.group(1) in cuts:
        where += f"[{list(cuts).index(m.group(1))}]"
    return ConfigError(f"{where}: {error}")


def _check_cuts(model: Any, spec: ProbeSpec) -> None:
    from frostline.errors import FrostlineValueError
    from frostline.train.probe_cuts import trace_cuts

    try:
        trace_cuts(model, spec.cuts if isinstance(spec.cuts, str) else list(spec.cuts))
    except FrostlineValueError as e:  # PlanError too: a selector that matches nothing
        raise _cut_error(e, spec.cuts) from None


def _train_config(config: TrainConfig, phases: list[Phase]) -> TrainConfig:
    """The configuration with the schedule's phases, without `probe:`, writing to
    OUTPUT/train; every path in it is absolute (the loader made them so)."""
    from frostline.app.config import TrainConfig

    raw = config.model_dump(mode="json", exclude={"probe"})
    raw.update(phases=[_phase_config(p) for p in phases], output=os.path.join(config.output, TRAIN_OUTPUT))
    try:
        return TrainConfig.model_validate(raw)
    except ValueError as e:
        raise ConfigError(f"probe.schedule: the phases fl.schedules.from_probe gave are not a valid phases: list: "
                          f"{' '.join(str(e).split())}") from None


def run_probe(config: TrainConfig, spec: ProbeSpec) -> ProbeOutcome:
    """Checks the configuration as `frostline train` does, then the cuts; probes; checks
    the schedule's train.yaml the same way; only then writes the output folder.

    Raises:
        ConfigError: for the first problem, before anything is written.
    """
    import keras

    from frostline.app.preflight import check_config, check_data
    from frostline.app.train_job import _checked_run, build_model, load_data
    from frostline.train.probe import probe
    from frostline.train.schedules import from_probe

    check_validation_data(config)
    check_config(config)
    data = load_data(config) if config.data.npz is not None else None
    if data is not None:
        check_data(config, *data)
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    _, (x, y, validation) = _checked_run(config, model, resume=False, data=data)  # as frostline train checks it
    _check_cuts(model, spec)
    started = time.perf_counter()
    result = probe(model, x, y, validation_data=validation, cuts=spec.cuts if isinstance(spec.cuts, str) else
                      list(spec.cuts), epochs=spec.epochs, batch_size=config.data.batch_size,
                      learning_rate=spec.learning_rate, seed=config.seed or 0)
    seconds = time.perf_counter() - started
    phases = from_probe(result, **spec.schedule.model_dump())
    train_config = _train_config(config, phases)
    try:  # the schedule runs as it is
        _checked_run(train_config, model, resume=False, data=(x, y, validation))
    except ConfigError as e:  # its phases are the schedule's, not the file's
        raise ConfigError(f"probe.schedule: the schedule from_probe gave cannot run: {e}") from None
    text = yaml.safe_dump(train_config.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    if type(train_config).model_validate(yaml.safe_load(text)) != train_config:  # what train will read back
        raise ConfigError("probe.schedule: train.yaml would not read back as written")
    out = config.output
    os.makedirs(out, exist_ok=True)
    files = {name: os.path.join(out, name) for name in FILES}
    with open(files["probe.json"], "w") as f:
        json.dump(result.to_dict(), f, indent=2)
        f.write("\n")
    result.plot(files["probe.png"])
    with open(files["phases.yaml"], "w") as f:
        f.write(schedule_yaml(phases))
    with open(files["train.yaml"], "w") as f:
        f.write("# frostline probe: the configuration with the schedule of probe.md; run it with\n"
                f"#   frostline train {files['train.yaml']}\n" + text)
    outcome = ProbeOutcome(result, phases, files, seconds)
    with open(files["probe.md"], "w") as f:
        f.write(_markdown(outcome, spec, train_config))
    return outcome


def _count(n: int) -> str:
    return f"{n:,}"


def _markdown(outcome: ProbeOutcome, spec: ProbeSpec, train_config: TrainConfig) -> str:
    result, best = outcome.result, outcome.result.best
    metric = result.metric
    lines = [
        f"# probe: {result.model}",
        "",
        f"A linear head at each of {len(result.rows)} cuts (cuts: {_cuts_text(spec.cuts)}), trained {result.epochs} "
        f"epochs with Adam at learning rate {spec.learning_rate:g} on the pooled activations of "
        f"{result.train_samples} training samples, scored on {result.validation_samples} validation samples.",
        "",
        f"| cut | layer | features | frozen parameters | {metric} | loss |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for row in result.rows:
        cells = [f"`{row['cut']}`", row["layer"], str(row["features"]),
                 f"{_count(row['frozen_params'])} ({row['frozen_fraction']:.0%})", f"{row['score']:.3f}",
                 f"{row['loss']:.3f}"]
        if row is best:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"**Best cut:** `{best['cut']}` ({metric} {best['score']:.3f}): it freezes "
        f"{', '.join(f'`{s}`' for s in best['freeze'])}, {_count(best['frozen_params'])} parameters "
        f"({best['frozen_fraction']:.0%} of the model's).",
        "",
        f"**Time:** {outcome.seconds:.1f} s: the pass of the data through the model {result.seconds['pass']:.1f} s, "
        f"the heads {result.seconds['heads']:.1f} s" + (" (features on disk)" if result.on_disk else "") + ".",
        "",
        "## Schedule",
        "",
        "`fl.schedules.from_probe(result, " + ", ".join(f"{k}={v!r}" for k, v in spec.schedule.model_dump().items())
        + ")`:",
        "",
        "| phase | epochs | learning rate | plan |",
        "|---|--:|--:|---|",
    ]
    for phase in outcome.phases:
        lines.append(f"| {phase.name} | {phase.epochs} | {phase.learning_rate:g} | {_plan_text(phase)} |")
    lines += [
        "",
        "The phases are in `phases.yaml`, and `train.yaml` is the configuration with them, writing to "
        f"`{train_config.output}`. Run them with `frostline train {outcome.files['train.yaml']}`.",
        "",
    ]
    return "\n".join(lines)


def _cuts_text(cuts: Any) -> str:
    return "auto" if isinstance(cuts, str) else ", ".join(f"`{c}`" for c in cuts)
