"""Hostile plans: YAML aliases, duplicate keys, bad values, pathological selectors. Each is
a PlanError with a short message, in bounded time and memory, and changes nothing."""

import time
import tracemalloc

import keras
import pytest

import frostline as fl
from frostline.errors import shorten
from frostline.plan.safe_yaml import MAX_YAML_DEPTH
from model_zoo import nested


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes that a plain YAML loader expands to 9**levels strings, placed
    where an error message would print them."""
    lines = ["rules:", "- freeze: base", "  z:", "  - &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def long_named_model() -> keras.Model:
    inputs = keras.Input((4,))
    x = inputs
    for i in range(3):
        x = keras.layers.Dense(4, name=f"d{i}_" + "a" * 60)(x)
    base = keras.Model(inputs, x, name="base")
    outer_in = keras.Input((4,))
    return keras.Model(outer_in, keras.layers.Dense(2, name="head")(base(outer_in)))


def flags(model):
    return [(layer.path, layer.trainable) for layer in model._flatten_layers()]


def test_yaml_alias_bomb_is_refused_without_growing_memory():
    text = alias_bomb()
    assert len(text.encode()) < 500
    tracemalloc.start()
    try:
        with pytest.raises(fl.PlanError, match=r"line 4, column 5: found the anchor &a0; anchors and aliases are refused"):
            fl.Plan.from_yaml(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20


def test_yaml_alias_alone_is_refused():
    with pytest.raises(fl.PlanError, match=r"found the alias \*a"):
        fl.Plan.from_yaml("rules:\n- freeze: *a\n")


@pytest.mark.parametrize(
    "text, message",
    [
        ("rules:\n- freeze: base\nrules: []\n", r"line 3, column 1: found the key 'rules' twice in one mapping"),
        ("rules:\n- freeze: a\n  freeze: b\n", r"line 3, column 3: found the key 'freeze' twice"),
        ("rules: 0\n", r"'rules' expects a list of rules, such as \[\{freeze: base\}\]. Received: 0 \(of type int\)"),
        ("rules: {freeze: base}\n", r"'rules' expects a list of rules.*\(of type dict\)"),
        ("rules: yes\n", r"'rules' expects a list of rules.*Received: True"),
        ("rules:\n- freeze: 2024-02-30\n", r"line 2, column 11: expected a date such as 2024-01-31.*received '2024-02-30'"),
        ("rules:\n- freeze: !!timestamp x\n", r"expected a date such as 2024-01-31.*received 'x'"),
        ("rules:\n- lr: base\n  multiplier: " + "9" * 5000 + "\n", r"line 3, column 15: cannot read '9999.*' as int"),
        ("rules:\n- lr: base\n  multiplier: !!float x\n", r"cannot read 'x' as float"),
        ("rules:\n- freeze: !!binary '@@'\n", r"expects a selector string.*Received: b'' \(of type bytes\)"),
        ("rules: " + "[" * 100 + "]" * 100 + "\n", rf"nested more than {MAX_YAML_DEPTH} deep"),
        ("rules:\n- freeze: [base]\n  ? [a]\n  : 1\n", r"unhashable key"),
    ],
)
def test_bad_yaml_is_a_plan_error_with_line_and_value(text, message):
    with pytest.raises(fl.PlanError, match=message) as e:
        fl.Plan.from_yaml(text)
    assert len(str(e.value)) < 400


def test_over_long_multiplier_is_a_plan_error():
    with pytest.raises(fl.PlanError, match=r"multiplier' expects a number that fits a float.*Received: <an integer of about 401 digits>"):
        fl.Plan().lr("base", 10**400)
    with pytest.raises(fl.PlanError, match=r"fits a float"):
        fl.Plan.from_config({"rules": [{"lr": "base", "multiplier": 10**400}]})


def test_invalid_utf8_plan_file_is_a_plan_error(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"rules:\n- freeze: \xff\xfe\n")
    with pytest.raises(fl.PlanError, match=r"expected UTF-8 text. Received the bytes b'\\xff\\xfe\\n' at byte 17"):
        fl.Plan.from_yaml(path)
    with pytest.raises(fl.PlanError, match=r"expected UTF-8 text"):
        fl.Plan.from_yaml(b"\xc3")


def test_plan_from_utf8_bytes_reads_like_text():
    assert fl.Plan.from_yaml(b"rules:\n- freeze: base\n") == fl.Plan().freeze("base")


def test_messages_show_a_shortened_value():
    huge = {"rules": [{"freeze": "base", "z": [["x" * 1000] * 1000] * 1000}]}
    with pytest.raises(fl.PlanError) as e:
        fl.Plan.from_config(huge)
    assert len(str(e.value)) < 300
    assert "unknown field 'z'" in str(e.value)
    with pytest.raises(fl.PlanError) as e:
        fl.Plan.from_config({"rules": [list(range(10**5))]})
    assert "[0, 1, 2, 3, 4, 5, ...]" in str(e.value)


def test_shorten_keeps_small_values_and_key_order():
    assert shorten({"b": 1, "a": 2}) == "{'b': 1, 'a': 2}"
    assert shorten("x" * 1000).startswith("'xxx") and len(shorten("x" * 1000)) <= 80


def test_pathological_path_glob_is_matched_in_bounded_time():
    model = long_named_model()
    tree = fl.LayerTree(model)
    start = time.perf_counter()
    with pytest.raises(fl.PlanError, match="matched no layer"):
        fl.resolve(fl.Plan().freeze("base/*a*a*a*a*a*a*a*a*a*a*b"), tree)
    fl.resolve(fl.Plan().freeze("base/*a*a*a*a*a*a*a*a*a*a"), tree)
    fl.resolve(fl.Plan().freeze("**a*a*a*a*a*a*a*a*a*a"), tree)
    with pytest.raises(fl.PlanError, match="matched no layer"):
        fl.resolve(fl.Plan().freeze("**a*a*a*a*a*a*a*a*a*a*b"), tree)
    assert time.perf_counter() - start < 1.0


def test_path_globs_keep_their_meaning():
    tree = fl.LayerTree(nested())

    def paths(selector):
        return [n.path for n in fl.parse_selector(selector).match(tree)]

    assert paths("base/**")[1:] == ["base/stem", "base/stem_bn", "base/block5",
                                "base/block5/conv1", "base/block5/conv2"]
    assert paths("base/**/conv?") == ["base/block5/conv1", "base/block5/conv2"]
    assert paths("**/conv[!1]") == ["base/block5/conv2"]
    assert paths("base/*/conv1") == ["base/block5/conv1"]
    assert paths("base/st*") == ["base/stem", "base/stem_bn"]
    assert paths("base/block5**") == ["base/block5", "base/block5/conv1", "base/block5/conv2"]
    assert paths("base/bl**2") == ["base/block5/conv2"]
    assert paths("base/**/block5") == []  # `**` between slashes is one or more segments


@pytest.mark.parametrize(
    "selector, message",
    [
        ("re:base/d1_(a+)+b", r"a repeat of something that itself repeats a variable number of times, such as \(a\+\)\+"),
        ("re:(a*)*", r"itself repeats"),
        ("re:(\\w+\\s?)*$", r"itself repeats"),
        ("re:(a|a)*", r"alternatives that can match the same text"),
        ("re:(a|.)*b", r"alternatives that can match the same text"),
        ("re:(a|ab|b)*c", r"alternatives that can match the same text"),
        ("re:.*a.*a.*a.*a.*b", r"5 unbounded repeats \(\*, \+ or \{n,\}\), more than 4"),
        ("re:a{99999999999}", r"malformed regular expression in selector 're:a\{99999999999\}': the repetition number is too large"),
        ("re:base/(", r"malformed regular expression.*missing \)"),
    ],
)
def test_backtracking_regexes_are_refused_with_the_reason(selector, message):
    with pytest.raises(fl.PlanError, match=message):
        fl.parse_selector(selector)


def test_ordinary_regexes_are_accepted():
    for selector in ["re:.*/(query|value)", "re:base/block[45]_.*", "re:base/block[12]_(conv|bn)",
                     "re:(query|value)+", "re:(?:a{3})*b", "re:.*_conv.*", "re:(ab|a)+c", "re:(a|\\w)*b"]:
        fl.parse_selector(selector)


@pytest.mark.parametrize(
    "selector, message",
    [
        ("[-:]", r"slice bound '-' in selector '\[-:\]'. Expected an integer after the minus sign"),
        ("[:-]", r"slice bound '-'"),
        ("[::-]", r"slice bound '-'"),
        ("base[" + "1" * 5000 + ":]", r"selector of 5,007 characters.*Expected at most 2,000"),
        ("base[" + "1" * 40 + ":]", r"slice bound of 40 digits.*at most 18 digits"),
        ("base" + "[1:2]" * 1000, r"selector of 5,004 characters"),
        ("base" + "[1:2]" * 9, r"more than 8 slices in a row"),
        ("base/d[2-1]", r"character class '\[2-1\]' in selector 'base/d\[2-1\]': its range 2-1 runs backwards. Expected a range such as \[1-2\]"),
        ("d[2-1]", r"runs backwards"),
        ("var:base/d[z-a]", r"runs backwards"),
    ],
)
def test_malformed_selectors_are_plan_errors(selector, message):
    with pytest.raises(fl.PlanError, match=message) as e:
        fl.parse_selector(selector)
    assert len(str(e.value)) < 400


def test_slices_and_character_classes_still_parse():
    assert fl.parse_selector("base[-2:]").index == slice(-2, None)
    assert fl.parse_selector("base[ 1 : 3 ]").index == slice(1, 3)
    assert fl.parse_selector("base[1:3][0:1]").prefix.index == slice(1, 3)
    assert type(fl.parse_selector("conv[12]")).__name__ == "NameSelector"
    assert type(fl.parse_selector("conv[a:b]")).__name__ == "NameSelector"


def test_apply_with_a_bad_plan_leaves_flags_as_they_were():
    model = nested()
    fl.apply(model, fl.Plan().freeze("base").unfreeze("conv2"))
    before = flags(model)
    for plan in [
        lambda: fl.Plan().freeze("head").freeze("re:base/(a+)+"),
        lambda: fl.Plan.from_yaml("rules:\n- freeze: head\n- unfreeze: &x base\n"),
        lambda: fl.Plan.from_yaml("rules:\n- freeze: head\nrules: []\n"),
        lambda: fl.Plan().freeze("head").unfreeze("[-:]"),
    ]:
        with pytest.raises(fl.PlanError):
            fl.apply(model, plan())
        assert flags(model) == before
    with pytest.raises(fl.PlanError, match="matched no layer"):
        fl.apply(model, fl.Plan().freeze("head").unfreeze("base/*a*a*a*a*a*a*a*a*a*a*b"))
    assert flags(model) == before
