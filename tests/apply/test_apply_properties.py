"""Random nested models with shared layers and random plans, against a brute-force reference."""

from __future__ import annotations

import fnmatch

import keras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import frostline as fl
from frostline.apply.apply import FlagSnapshot

WIDTH = 3


@st.composite
def model_specs(draw, depth=0, counter=None):
    """A nested spec: ("dense", k) makes Dense layer k (reused when k repeats: shared),
    ("nested", [...]) a Sequential inside. Built outside the strategy, since Keras's
    initializers draw from the `random` module."""
    counter = counter if counter is not None else [0]
    items = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dense", "nested", "nested", "shared", "shared"] if depth < 3 else ["dense", "shared"]))
        if kind == "nested":
            items.append(("nested", draw(model_specs(depth + 1, counter))))
        elif kind == "shared" and counter[0]:
            k = draw(st.integers(0, counter[0] - 1))
            if ("dense", k) not in items:
                items.append(("dense", k))
        else:
            items.append(("dense", counter[0]))
            counter[0] += 1
    return items


def spec_paths(spec):
    """The layer paths `build_model(spec)` will have, named as it names them."""
    counter = iter(range(1000))

    def container(items, prefix):
        out = []
        for kind, value in items:
            if kind == "nested":
                inner, name = container(value, None)
                path = f"{prefix}/{name}" if prefix else name
                out.append(path)
                out.extend(f"{path}/{p}" for p in inner)
            else:
                out.append(f"{prefix}/d{value}" if prefix else f"d{value}")
        return out, f"c{next(counter)}"

    def relative(items):
        paths, _ = container(items, None)
        return paths

    return relative(spec)


def build_model(spec, frozen_by_hand):
    dense: dict[int, keras.layers.Layer] = {}
    counter = iter(range(1000))

    def container(items):
        layers = []
        for kind, value in items:
            if kind == "nested":
                layers.append(container(value))
            else:
                if value not in dense:
                    dense[value] = keras.layers.Dense(WIDTH, name=f"d{value}")
                layers.append(dense[value])
        return keras.Sequential([keras.Input((WIDTH,)), *layers], name=f"c{next(counter)}")

    model = container(spec)
    # Start from flags a user might have set by hand, with Keras's own setters.
    for i, layer in enumerate(model._flatten_layers(include_self=False)):
        if i in frozen_by_hand:
            layer.trainable = False
    return model


def reference_layers(model):
    """Every layer with all its paths and its direct sublayers, walked naively."""
    paths: dict[int, list[str]] = {}
    layers: dict[int, keras.layers.Layer] = {}

    def walk(container, prefix):
        for child in container.layers:
            path = f"{prefix}/{child.name}" if prefix else child.name
            paths.setdefault(id(child), []).append(path)
            layers[id(child)] = child
            if isinstance(child, keras.Sequential):
                walk(child, path)

    walk(model, "")
    return layers, paths


def inside(layer):
    out = [layer]
    if isinstance(layer, keras.Sequential):
        for child in layer.layers:
            out.extend(inside(child))
    return out


def reference_trainable(model, rules):
    """By brute force, for rules of (value, selector): the ids of the variables that
    should train, and whether some selector matches nothing."""
    layers, paths = reference_layers(model)
    current = {id(v) for v in model.trainable_weights}
    decision = {lid: any(id(v) in current for v in layer.weights[:2]) for lid, layer in layers.items() if isinstance(layer, keras.layers.Dense)}
    empty = False
    for value, selector in rules:
        chosen = []
        if selector.startswith("type:"):
            chosen = [l for l in layers.values() if type(l).__name__ == selector[5:]]
        elif selector.startswith("["):
            start, stop = selector[1:-1].split(":")
            chosen = model.layers[slice(int(start) if start else None, int(stop) if stop else None)]
        elif "/" in selector:
            chosen = [layers[lid] for lid, ps in paths.items() if selector in ps]
        else:
            chosen = [l for l in layers.values() if fnmatch.fnmatchcase(l.name, selector)]
        empty = empty or not chosen
        for layer in chosen:
            for sub in inside(layer):
                if id(sub) in decision:
                    decision[id(sub)] = value
    return {id(v) for lid, on in decision.items() if on for v in layers[lid].weights}, empty


@st.composite
def models_and_plans(draw):
    spec = draw(model_specs())
    frozen_by_hand = draw(st.sets(st.integers(0, 12), max_size=3))
    all_paths = spec_paths(spec)
    names = sorted({p.rsplit("/", 1)[-1] for p in all_paths})
    selector = st.one_of(
        st.sampled_from(names),
        st.sampled_from(all_paths),
        st.sampled_from(["type:Dense", "type:Sequential", "d*", "c*"]),
        st.builds(lambda a, b: f"[{a}:{b}]", st.sampled_from(["", "0", "1", "-1"]), st.sampled_from(["", "1", "-1", "2"])),
    )
    rules = draw(st.lists(st.tuples(st.booleans(), selector), min_size=1, max_size=5))
    return spec, frozen_by_hand, rules


def build_plan(rules):
    plan = fl.Plan()
    for value, selector in rules:
        plan = plan.unfreeze(selector) if value else plan.freeze(selector)
    return plan


COMMON = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(models_and_plans())
def test_apply_trains_exactly_what_brute_force_says(case):
    spec, frozen_by_hand, rules = case
    model = build_model(spec, frozen_by_hand)
    expected, some_selector_matches_nothing = reference_trainable(model, rules)
    before = FlagSnapshot(fl.LayerTree(model))
    if some_selector_matches_nothing:
        with pytest.raises(fl.PlanError, match="matched no layer|The slice is empty"):
            fl.apply(model, build_plan(rules))
        assert FlagSnapshot(fl.LayerTree(model)) == before
        return
    fl.apply(model, build_plan(rules))
    assert {id(v) for v in model.trainable_weights} == expected
    # Every container agrees with the model on what trains inside it.
    trainable = {id(v) for v in model.trainable_weights}
    for layer in model._flatten_layers(include_self=False):
        assert {id(v) for v in layer.trainable_weights} == trainable & {id(v) for v in layer.weights}


@COMMON
@given(models_and_plans(), st.sampled_from(["nope", "c/nothing", "type:Conv2D", "type:Dens", "d1[0:1]", "re:("]))
def test_failing_plans_leave_every_flag_as_it_was(case, bad):
    spec, frozen_by_hand, rules = case
    model = build_model(spec, frozen_by_hand)
    before = FlagSnapshot(fl.LayerTree(model))
    trainable_before = [id(v) for v in model.trainable_weights]
    insert_at = len(rules) // 2
    with pytest.raises(fl.PlanError):
        plan = build_plan(rules[:insert_at]).freeze(bad).then(build_plan(rules[insert_at:]))
        fl.apply(model, plan)
    assert FlagSnapshot(fl.LayerTree(model)) == before
    assert [id(v) for v in model.trainable_weights] == trainable_before


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_specs(), st.lists(st.lists(st.tuples(st.booleans(), st.sampled_from(["type:Dense", "d*", "c*", "[:1]", "[-1:]", "d0", "d1", "d2"])), min_size=1, max_size=3), min_size=1, max_size=3))
def test_plans_applied_between_fits_train_exactly_the_resolved_set(spec, plans):
    """Random models, random sequences of plans applied between real fits: after every
    fit, exactly the resolved trainable variables changed."""
    import numpy as np

    model = build_model(spec, set())
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, WIDTH)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, WIDTH)).astype("float32")
    model.fit(x, y, batch_size=4, verbose=0)
    for rules in plans:
        try:
            fl.apply(model, build_plan(rules))
        except fl.PlanError:
            continue
        expected = {id(v) for v in fl.resolve(fl.Plan(), fl.LayerTree(model)).trainable_variables}
        before = {id(v): keras.ops.convert_to_numpy(v.value).copy() for v in model.weights}
        model.fit(x, y, batch_size=4, verbose=0)
        moved = {id(v) for v in model.weights if not np.array_equal(before[id(v)], keras.ops.convert_to_numpy(v.value))}
        assert moved == expected
