"""The heads benchmark end to end at toy size: its report has every row, curve and verdict it promises."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_heads

pytestmark = pytest.mark.slow

pytest.importorskip("sentence_transformers")


def test_bench_heads_reports_curves_ablations_and_the_goal(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "heads"
    args = ["--iters", "8", "--seeds", "0", "1", "--rounds", "1", "--input", "64x128", "--shapes-size", "48x96"]
    args += ["--shapes-train", "6", "--shapes-val", "3", "--crop", "48x96", "--out", str(out)]
    args += ["--backbone", "lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5", "--dataset", "synthetic:size=48x96,train=6,val=3"]
    args += ["--dataset", "shapes"]
    assert bench_heads.main(args) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    train = report["training"]
    variants = [*bench_heads.HEADS, *bench_heads.ABLATIONS]
    assert len(train) == 2 * 2 * len(variants)  # datasets x seeds x (heads + ablations)
    assert {t["head"] for t in train} == set(variants)
    assert all([c["iters"] for c in t["curve"]] == [1, 2, 4, 8] for t in train)
    shapes = [t for t in train if t["dataset"] == "shapes"]
    assert all(t["rare_miou"] is not None and 0 <= t["rare_miou"] <= 1 for t in shapes)
    assert all(t["rare_miou"] is None for t in train if t["dataset"] == "synthetic")
    # Each head trained with its own recipe, recorded with the result.
    fusion = next(t for t in train if t["head"] == "fusion")
    assert [g["optimizer"] for g in fusion["param_groups"]] == ["sgd", "adamw", "adamw"]
    legacy = next(t for t in train if t["head"].startswith("fusion, before"))
    assert [g["optimizer"] for g in legacy["param_groups"]] == ["sgd"]
    md = out.with_suffix(".md").read_text()
    assert md.count("**") == 2 * 2  # one bold verdict per dataset (one backbone here)
    assert "| fusion without text->pixels |" in md and "rare classes @end" in md
    assert len(report["latency"]) == 3
