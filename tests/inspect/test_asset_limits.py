"""Hostile `.keras` files: frostline's assets are size-checked before they are read, read
with a bound, and every failure is a frostline error naming the file."""

import json
import struct
import time
import tracemalloc
import zipfile

import pytest

import frostline as fl
from frostline.inspect.saving import MAX_ASSET_BYTES, PLAN_ASSET, STATE_ASSET
from model_zoo import nested


def saved(tmp_path):
    model = nested()
    fl.apply(model, fl.Plan().freeze("base"))
    path = tmp_path / "good.keras"
    model.save(path)
    return path


def with_asset(path, out, name, write):
    """A copy of the `.keras` file at `path` whose asset `name` is written by `write(f)`."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.endswith(name):
                with dst.open(info.filename, "w", force_zip64=True) as f:
                    write(f)
            else:
                dst.writestr(info, src.read(info.filename))
    return out


def inflating(size):
    def write(f):
        f.write(b"rules:\n- freeze: base\n")
        chunk = b"#" * 2**22
        for _ in range(size // len(chunk)):
            f.write(chunk)
    return write


def test_plan_asset_inflating_past_the_limit_is_refused_unread(tmp_path):
    bomb = with_asset(saved(tmp_path), tmp_path / "bomb.keras", PLAN_ASSET, inflating(MAX_ASSET_BYTES + 2**23))
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(fl.FrostlineError, match=r"its frostline_plan.yaml would unpack to 75,497,494 bytes, "
                                                     r"more than the 67,108,864 frostline ever writes; refused unread"):
            fl.load_plan(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 2**20
    with pytest.raises(fl.FrostlineError, match="refused unread"):
        fl.load_model(bomb)


def test_state_asset_inflating_past_the_limit_is_refused(tmp_path):
    bomb = with_asset(saved(tmp_path), tmp_path / "bomb.keras", STATE_ASSET, inflating(MAX_ASSET_BYTES + 2**23))
    with pytest.raises(fl.FrostlineError, match="its frostline_state.json would unpack to .* refused unread"):
        fl.load_model(bomb)


def central_entry(data: bytes, name: str) -> int:
    """The offset of the central directory entry of `name` in zip bytes."""
    at = data.find(b"PK\x01\x02")
    while at != -1:
        length = struct.unpack("<H", data[at + 28 : at + 30])[0]
        if data[at + 46 : at + 46 + length].decode().endswith(name):
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(name)


def test_asset_whose_stored_size_understates_it_is_read_with_a_bound(tmp_path):
    bomb = with_asset(saved(tmp_path), tmp_path / "bomb.keras", PLAN_ASSET, inflating(2**24))
    data = bytearray(bomb.read_bytes())
    at = central_entry(bytes(data), PLAN_ASSET)
    data[at + 24 : at + 28] = struct.pack("<I", 40)  # claims 40 bytes; it inflates to 16 MiB
    bomb.write_bytes(bytes(data))
    with zipfile.ZipFile(bomb) as archive:
        assert archive.getinfo("assets/" + PLAN_ASSET).file_size == 40
    tracemalloc.start()
    try:
        with pytest.raises(fl.FrostlineError, match=r"its frostline_plan.yaml cannot be read \(Bad CRC-32"):
            fl.load_plan(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # read in 1 MiB pieces, never the 16 MiB


def test_damaged_archive_is_a_frostline_error(tmp_path):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("assets/" + PLAN_ASSET)
    data[info.header_offset + 30 + len(info.filename) : info.header_offset + 34 + len(info.filename)] = b"\xff" * 4
    path.write_bytes(bytes(data))
    with pytest.raises(fl.FrostlineError, match="its frostline_plan.yaml cannot be read"):
        fl.load_plan(path)


@pytest.mark.parametrize(
    "content, error, message",
    [
        (b"rules:\n- freeze: &a base\n- unfreeze: *a\n", fl.PlanError,
         r"'.*bad.keras': its stored plan \(frostline_plan.yaml\): Plan: malformed YAML at line 2, column 11: found the anchor &a"),
        (b"rules:\n- freeze: base\nrules: []\n", fl.PlanError, r"its stored plan.*found the key 'rules' twice"),
        (b"rules: 0\n", fl.PlanError, r"its stored plan.*'rules' expects a list of rules"),
        (b"rules:\n- freeze: \xff\n", fl.FrostlineError, r"its frostline_plan.yaml is not UTF-8 text"),
    ],
)
def test_hostile_stored_plan_is_a_frostline_error_naming_the_file(tmp_path, content, error, message):
    bad = with_asset(saved(tmp_path), tmp_path / "bad.keras", PLAN_ASSET, lambda f: f.write(content))
    with pytest.raises(error, match=message):
        fl.load_plan(bad)


def test_deeply_nested_stored_state_is_a_frostline_error(tmp_path):
    bad = with_asset(saved(tmp_path), tmp_path / "bad.keras", STATE_ASSET, lambda f: f.write(b"[" * 200_000))
    with pytest.raises(fl.FrostlineError, match="its frostline_state.json is not valid JSON"):
        fl.load_model(bad)


@pytest.mark.parametrize(
    "state, message",
    [
        ({"variables": 0}, r"'variables' expects a mapping of paths. Received: 0"),
        ({"variables": {"head/kernel": "yes"}}, r"variables\['head/kernel'\] expects true or false. Received: 'yes'"),
        ({"layers": {"head": {"trainable": True}}}, r"layers\['head'\] expects \{trainable: bool, inference: bool\}"),
        ({"lr": {"head/kernel": -1}}, r"lr\['head/kernel'\] expects a number of 0 or more. Received: -1"),
        ({"adapters": {"head": {"rank": 10**400, "alpha": 1.0}}}, r"adapters\['head'\] expects \{rank: positive int, alpha: number\}. Received: \{'rank': <an integer of about 401 digits>"),
    ],
)
def test_stored_state_of_the_wrong_types_is_refused_before_anything_changes(tmp_path, state, message):
    good = saved(tmp_path)
    with zipfile.ZipFile(good) as archive:
        stored = json.loads(archive.read("assets/" + STATE_ASSET))
    stored.update(state)
    bad = with_asset(good, tmp_path / "bad.keras", STATE_ASSET, lambda f: f.write(json.dumps(stored).encode()))
    with pytest.raises(fl.FrostlineError, match=r"its frostline_state.json is not one this frostline writes: " + message):
        fl.load_model(bad)
