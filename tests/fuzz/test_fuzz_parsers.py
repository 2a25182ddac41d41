"""Fuzzing every parser of outside input: selectors, plan data, plan YAML and the assets
of `.keras` files. Any input either parses or raises a frostline error, each example
within a second and within 16 MiB of memory allocated while it runs; globs agree with the
regular expressions they replaced."""

import functools
import json
import re
import shutil
import tracemalloc
import warnings
import zipfile

import keras
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import frostline as fl
from frostline.apply.loading import restore_state
from frostline.inspect.saving import PLAN_ASSET, STATE_ASSET, load_plan, read_stored_state
from frostline.plan.patterns import check_glob, compile_glob

FUZZ = settings(deadline=1000, max_examples=1000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
SELECTOR_CHARS = "ab/*?[]!-:^019 re:typvar(){}+|.\\$,"


@functools.cache
def tree() -> fl.LayerTree:
    """Long, repetitive layer names: the worst case for backtracking patterns."""
    inputs = keras.Input((3,))
    x = inputs
    for i in range(4):
        x = keras.layers.Dense(3, name=f"b{i}_" + "a" * 50)(x)
    base = keras.Model(inputs, x, name="base")
    outer = keras.Input((3,))
    return fl.LayerTree(keras.Model(outer, keras.layers.Dense(2, name="head")(base(outer))))


MEMORY_LIMIT = 16 * 2**20  # bytes a single example may allocate at its peak


@pytest.fixture(scope="module", autouse=True)
def _built_tree():
    tree()  # built once, outside the time limit of the examples


def parses_or_refuses(build, *, memory: bool = True):
    """Runs `build()`; any exception must be a frostline error, and, with `memory`, what
    it allocates at its peak stays under `MEMORY_LIMIT` (traced by `tracemalloc`, which
    slows Python's allocations several times)."""
    if memory:
        tracemalloc.start()
    try:
        return build()
    except fl.FrostlineError:
        return None
    finally:
        if memory:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < MEMORY_LIMIT, f"an example allocated {peak:,} bytes at its peak"


selectors = st.one_of(
    st.text(SELECTOR_CHARS, max_size=40),
    st.builds(lambda p, s: p + s, st.sampled_from(["re:", "var:", "type:", "base/", "base", "[", "**/"]),
              st.text(SELECTOR_CHARS, max_size=40)),
    st.builds(lambda n, k: "base/" + "*a" * n + "*" * k + "b", st.integers(0, 12), st.integers(0, 3)),
    st.builds(lambda g, n: "re:" + g * n, st.sampled_from(["(a+)+", "(a|a)*", ".*a", "a*", "(?:ab)?", "[ab]+"]),
              st.integers(1, 8)),
    st.builds(lambda d, n: "base" + f"[{d}:]" * n, st.text("-0123456789", max_size=30), st.integers(1, 12)),
)


@FUZZ
@given(selectors)
def test_any_selector_parses_and_matches_in_bounded_time_or_is_refused(text):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Possible nested set", FutureWarning)  # re's own, for `re:[[`
        selector = parses_or_refuses(lambda: fl.parse_selector(text), memory=False)
    if selector is not None:  # bounded by its length; the time limit is the bound that matters
        parses_or_refuses(lambda: fl.resolve(fl.Plan().freeze(selector), tree()), memory=False)


def reference_regex(pattern: str) -> str:
    """The translation path globs had, with classes kept off `/` (as they are now)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            j = pattern.find("]", j)
            if j == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j].replace("\\", "\\\\")
            body = "^" + body[1:] if body.startswith("!") else "\\" + body if body.startswith("^") else body
            out.append(f"(?!/)[{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@settings(deadline=1000, max_examples=1000, derandomize=True)
@given(st.text("ab/*?[]!-^\\", max_size=10), st.text("ab/-!^]\\", max_size=10))
def test_globs_match_what_the_old_translation_matched(pattern, path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # `[[]`: the old translation warned
            expected = re.fullmatch(reference_regex(pattern), path) is not None
    except re.error:  # a reversed range: refused before matching now
        with pytest.raises(fl.PlanError, match="runs backwards"):
            check_glob(pattern, pattern)
        return
    check_glob(pattern, pattern)
    assert compile_glob(pattern)(path) == expected


PLAN_KEYS = st.sampled_from(["rules", "freeze", "unfreeze", "lr", "multiplier", "lora", "rank", "alpha",
                             "inference", "enabled", "x"]) | st.text(max_size=5)


def nested(children):
    return st.lists(children, max_size=4) | st.dictionaries(PLAN_KEYS, children, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["base", "head", "base/**", "re:(a+)+", "[-:]", "type:Dense"]),
    nested,
    max_leaves=20,
)


@FUZZ
@given(json_values)
def test_any_plan_data_is_a_plan_or_a_plan_error(data):
    plan = parses_or_refuses(lambda: fl.Plan.from_config(data))
    if plan is not None:
        assert fl.Plan.from_yaml(plan.to_yaml()) == plan


YAML_PIECES = ["rules:", "\n", "- ", "freeze: ", "base", "&a ", "*a", "[", "]", "{", "}", ", ", ": ", "!!timestamp ",
               "!!binary ", "!!python/object ", "2024-02-30", "9" * 50, "'", '"', "? ", "<<: ", "  ", "#", "\t", "%YAML 1.1\n",
               "---\n", "|\n", "\\xff", "lr: base\n  multiplier: "]


@FUZZ
@given(st.one_of(st.lists(st.sampled_from(YAML_PIECES), max_size=30).map("".join), st.text(max_size=200)))
def test_any_yaml_text_is_a_plan_or_a_plan_error(text):
    parses_or_refuses(lambda: fl.Plan.from_yaml(text + "\n"))


@FUZZ
@given(st.binary(max_size=200))
def test_any_yaml_bytes_are_a_plan_or_a_plan_error(data):
    parses_or_refuses(lambda: fl.Plan.from_yaml(data))


@FUZZ
@given(json_values)
def test_yaml_written_from_any_data_reads_back_or_is_refused(data):
    parses_or_refuses(lambda: fl.Plan.from_yaml(yaml.safe_dump(data)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_assets")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs))
    fl.apply(model, fl.Plan().freeze("head"))
    path = folder / "good.keras"
    model.save(path)
    loaded_model(path)  # loaded once, outside the time limit of the examples
    return path


def replace_asset(good, out, name, content: bytes):
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, content if info.filename.endswith(name) else src.read(info.filename))


@settings(deadline=1000, max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([PLAN_ASSET, STATE_ASSET]),
       st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(YAML_PIECES + ['{"', '":', "[", "1e999", "true"]),
                                                  max_size=30).map(lambda p: "".join(p).encode())))
def test_any_stored_asset_is_read_or_refused_with_a_frostline_error(saved, name, content):
    out = saved.parent / "fuzzed.keras"
    replace_asset(saved, out, name, content)
    parses_or_refuses(lambda: load_plan(out))
    parses_or_refuses(lambda: read_stored_state(out))


@settings(deadline=1000, max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["version", "variables", "layers", "lr", "adapters"]), json_values,
       st.sampled_from(["head", "head/kernel", "head/bias", "x"]))
def test_any_stored_state_is_restored_or_refused_with_a_frostline_error(saved, key, value, path):
    with zipfile.ZipFile(saved) as archive:
        state = json.loads(archive.read("assets/" + STATE_ASSET))
    state[key] = value if key == "version" or not isinstance(value, dict) else {path: value}
    out = saved.parent / "state.keras"
    replace_asset(saved, out, STATE_ASSET, json.dumps(state).encode())
    read = parses_or_refuses(lambda: read_stored_state(out))
    if read is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # where the state and the model disagree
            parses_or_refuses(lambda: restore_state(loaded_model(saved), read))


@functools.cache
def loaded_model(path):
    return keras.saving.load_model(path)


@settings(deadline=1000, max_examples=400, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_damaged_archive_is_refused_with_a_frostline_error(saved, data):
    raw = bytearray(saved.read_bytes())
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    for _ in range(data.draw(st.integers(1, 8))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    out = saved.parent / "damaged.keras"
    out.write_bytes(bytes(raw))
    parses_or_refuses(lambda: load_plan(out))
    parses_or_refuses(lambda: read_stored_state(out))


def test_fuzz_fixture_files_are_real_keras_files(saved, tmp_path):
    copy = tmp_path / "copy.keras"
    shutil.copy(saved, copy)
    assert load_plan(copy) == fl.Plan().freeze("head")
