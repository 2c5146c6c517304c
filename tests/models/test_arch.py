from __future__ import annotations

import dataclasses
import json

import pytest

from models import ArchError, LPSNetArch, load_arch_json, parse_inline

S = dict(depth=(1, 3, 3, 10, 10), width=(8, 24, 48, 96, 96), resolution=(0.75, 0.25))


def test_resolution_is_canonical_zeros_dropped_sorted_high_to_low():
    a = LPSNetArch(**{**S, "resolution": (0.25, 0, 0.75)})
    assert a.resolution == (0.75, 0.25)
    assert a.num_paths == 2
    assert a == LPSNetArch(**S)
    assert a.arch_hash() == LPSNetArch(**S).arch_hash()


def test_fields_are_normalised_to_int_tuples():
    a = LPSNetArch(depth=[1, 1, 1, 1, 1], width=[4.0, 8, 16, 32, 32], resolution=["1/2"])
    assert a.depth == (1, 1, 1, 1, 1) and isinstance(a.depth, tuple)
    assert a.width == (4, 8, 16, 32, 32) and all(type(w) is int for w in a.width)
    assert a.resolution == (0.5,)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": (4, 8, 0, 32, 32)}, "width[2] must be > 0, got 0"),
        ({"depth": (1, 1, 1, 1, -2)}, "depth[4] must be > 0, got -2"),
        ({"depth": (1, 1, 1, 1)}, "depth must have 5 entries, got 4"),
        ({"width": (4, 8, 16.5, 32, 32)}, "width[2] must be an integer, got 16.5"),
        ({"width": "wide"}, "width must be a list of 5 integers"),
        ({"resolution": (1.5,)}, "resolution[0] must be in (0, 1]"),
        ({"resolution": (0.5, -0.25)}, "resolution[1] must be in (0, 1]"),
        ({"resolution": (0, 0, 0)}, "at least one non-zero factor"),
        ({"resolution": (0.5, 0.25, 0.125, 0.1)}, "at most 3 entries, got 4"),
        ({"resolution": ("half",)}, "resolution[0] must be a number such as 0.75 or 3/4, got 'half'"),
        ({"resolution": (float("nan"),)}, "resolution[0] must be a finite number"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
        ({"num_classes": True}, "num_classes must be an integer >= 1, got True"),
    ],
)
def test_validation_names_the_bad_field(change, message):
    with pytest.raises(ArchError) as e:
        LPSNetArch(**{**S, **change})
    assert message in str(e.value)


def test_replace_revalidates():
    a = LPSNetArch(**S)
    b = dataclasses.replace(a, width=(8, 24, 48, 96, 128))
    assert b.width[-1] == 128 and a.width[-1] == 96
    with pytest.raises(ArchError, match=r"width\[0\] must be > 0"):
        dataclasses.replace(a, width=(0, 24, 48, 96, 96))


def test_hash_is_stable_and_distinguishes_architectures():
    a = LPSNetArch(**S)
    # A literal: changing the canonical form would orphan every stored result keyed by this hash.
    assert a.arch_hash() == "ad758a42bb25"
    assert len(a.arch_hash(length=64)) == 64
    assert dataclasses.replace(a, num_classes=11).arch_hash() != a.arch_hash()
    assert dataclasses.replace(a, resolution=(1, 0.25)).arch_hash() != a.arch_hash()
    assert hash(a) == hash(LPSNetArch(**S))


def test_json_round_trip(tmp_path):
    a = LPSNetArch(depth=(1, 2, 3, 4, 5), width=(3, 5, 7, 11, 13), resolution=(1, 0.375, 0.125), num_classes=7)
    assert LPSNetArch.from_json(a.to_json()) == a
    p = tmp_path / "arch.json"
    p.write_text(a.to_json())
    assert load_arch_json(p) == a
    assert json.loads(a.to_json())["family"] == "lpsnet"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"depth": [1,1,1,1,1], "width": [4,8,16,32,32]}', "missing key 'resolution'"),
        ('{"depth": [1,1,1,1,1], "width": [4,8,16,32,32], "resolution": [0.5], "colour": 1}', "unknown key 'colour'"),
        (
            '{"family": "resnet", "depth": [1], "width": [1], "resolution": [1]}',
            "unknown family 'resnet'",
        ),
        ("[1, 2]", "expected a JSON object, got list"),
        ("{not json", "not valid JSON"),
        ('{"depth": [1,1,1,1,1], "width": [4,8,0,32,32], "resolution": [0.5]}', "width[2] must be > 0, got 0"),
    ],
)
def test_bad_arch_json_names_file_and_problem(tmp_path, text, message):
    p = tmp_path / "arch.json"
    p.write_text(text)
    with pytest.raises(ArchError) as e:
        load_arch_json(p)
    assert str(p) in str(e.value)
    assert message in str(e.value)


def test_missing_arch_json():
    with pytest.raises(ArchError, match="cannot read architecture file"):
        load_arch_json("/nonexistent/arch.json")


def test_inline_round_trip_and_fractions():
    a = parse_inline("lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=3/4,1/4")
    assert a == LPSNetArch(**S)
    assert a.inline() == "lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25"
    assert parse_inline(a.inline()) == a
    b = parse_inline("lpsnet: depth=1,1,1,1,1; width=4,8,16,32,32; r=0.5; c=7")
    assert b.num_classes == 7
    assert parse_inline(b.inline()) == b


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resnet:d=1", "must start with 'lpsnet:'"),
        ("lpsnet:d=1,1,1,1,1;w=4,8,16,32,32", "missing resolution"),
        ("lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5;x=3", "bad part 'x=3'"),
        ("lpsnet:d=1,1,1,1,1;d=1,1,1,1,1;w=4,8,16,32,32;r=0.5", "depth given twice"),
        ("lpsnet:d=1,a,1,1,1;w=4,8,16,32,32;r=0.5", "depth must be integers"),
        ("lpsnet:d=1,1,1,1,1;w=4,8,0,32,32;r=0.5", "width[2] must be > 0, got 0"),
    ],
)
def test_bad_inline(text, message):
    with pytest.raises(ArchError) as e:
        parse_inline(text)
    assert message in str(e.value)


@pytest.mark.parametrize(("h", "w"), [(1024, 2048), (97, 131), (16, 16), (17, 33)])
def test_head_size_matches_stride_16_arithmetic(h, w):
    a = LPSNetArch(**S)
    ph, pw = int(h * 0.75), int(w * 0.75)
    expect = ph, pw
    for _ in range(4):
        expect = ((expect[0] + 1) // 2, (expect[1] + 1) // 2)
    assert a.head_size(h, w) == expect


def test_check_input_size():
    a = LPSNetArch(**S)
    a.check_input_size(4, 4)
    with pytest.raises(ValueError, match=r"too small for resolution factor 0.25"):
        a.check_input_size(3, 100)
