from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from models import get_arch
from scaler.cli import main


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_help_lists_commands(run):
    r = run("--help")
    assert r.exit_code == 0
    assert "info" in r.output and "models" in r.output
    r = run("info", "--help")
    assert r.exit_code == 0 and "arch.json" in r.output and "--flops-backend" in r.output


def test_models_table_and_json(run):
    r = run("models")
    assert r.exit_code == 0
    rows = {line.split()[0]: line.split()[1] for line in r.output.splitlines()[1:7]}
    assert rows["lpsnet_s"] == "lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25"
    assert rows["lpsnet_l"] == "lpsnet:d=1,3,3,10,10;w=8,24,64,160,160;r=1,0.25"
    assert rows["mobilenetv2_050"] == "mobilenetv2:m=0.5"
    rows = json.loads(run("models", "--json").output)
    names = ["lpsnet_l", "lpsnet_m", "lpsnet_s", "lpsnet_tiny", "mobilenetv2_050", "mobilenetv2_100"]
    assert [row["name"] for row in rows] == names
    assert rows[3]["width"] == [4, 8, 16, 32, 32] and rows[3]["arch_hash"] == get_arch("lpsnet_tiny").arch_hash()
    assert rows[4]["family"] == "mobilenetv2" and rows[4]["width_mult"] == 0.5


def test_info_text(run):
    r = run("info", "lpsnet_s", "--input", "256x512")
    assert r.exit_code == 0, r.output
    assert "3,375,363 (train form" in r.output
    assert "3,371,075 (deploy form" in r.output
    assert "backend 'aten'" in r.output
    assert "no final upsample" in r.output
    assert "inputs 192x384, 64x128" in r.output


def test_info_json_all_three_arch_spellings_agree(run, tmp_path):
    arch = get_arch("lpsnet_m")
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    outs = []
    for spec in ("lpsnet_m", arch.inline(), str(path)):
        r = run("info", spec, "--input", "128x256", "--json")
        assert r.exit_code == 0, r.output
        outs.append(json.loads(r.output))
    assert outs[0]["name"] == "lpsnet_m" and outs[1]["name"] is None
    for d in outs:
        d.pop("name")
    assert outs[0] == outs[1] == outs[2]
    assert outs[0]["params_train"] == 3_375_363
    assert outs[0]["arch_hash"] == arch.arch_hash()


def test_info_classes_and_backend(run):
    d = json.loads(run("info", "lpsnet_tiny", "--classes", "11", "--input", "97x131", "--json").output)
    assert d["arch"]["num_classes"] == 11
    assert d["params_train"] == 16_183 - 8 * 32 - 8  # 8 fewer head rows of 32 weights + 1 bias each
    aten = d["macs"]
    d2 = json.loads(
        run(
            "info",
            "lpsnet_tiny",
            "--classes",
            "11",
            "--input",
            "97x131",
            "--json",
            "--flops-backend",
            "pytorch",
            "--with-upsample",
        ).output
    )
    assert d2["flops_counter"]["backend"] == "pytorch" and d2["include_final_upsample"] is True
    assert d2["macs"] > aten


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "lpsnet_xl"), "unknown architecture 'lpsnet_xl'"),
        (("info", "lpsnet:d=1,1,1,1,1;w=4,8,0,32,32;r=0.5"), "width[2] must be > 0, got 0"),
        (("info", "lpsnet_s", "--input", "10x"), "'10x' is not HxW"),
        (("info", "lpsnet_s", "--input", "2x64"), "too small for resolution factor 0.25"),
        (("info", "lpsnet_s", "--classes", "0"), "--classes"),
        (("info", "missing/arch.json"), "cannot read architecture file"),
        (("nosuchcommand",), "No such command"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(run, args, message):
    r = run(*args)
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert message in err
    assert "Traceback" not in r.output


def test_bad_arch_json_names_the_file(run, tmp_path):
    p = tmp_path / "arch.json"
    p.write_text('{"depth": [1,1,1,1,1], "width": [4,8,16,32,32], "resolution": [1.5]}')
    r = run("info", str(p))
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: {p}: resolution[0] must be in (0, 1] (or 0 for no path), got 1.5"


def test_version(run):
    r = run("--version")
    assert r.exit_code == 0 and "lps-scaler" in r.output


def test_train_command_text_json_and_save(run, tmp_path):
    args = [
        "train",
        "lpsnet_tiny",
        "--dataset",
        "synthetic:size=64x128,train=8,val=4",
        "--iters",
        "6",
        "--batch",
        "2",
        "--crop",
        "64x96",
        "--quiet",
    ]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and "4 val images at native size" in r.output and "images/s" in r.output
    assert "road" in r.output and "traffic sign" in r.output
    weights = tmp_path / "w.pt"
    r = run(*args, "--json", "--save", str(weights))
    data = json.loads(r.stdout)
    assert data["status"] == "ok" and data["iters_done"] == 6 and data["arch"]["num_classes"] == 10
    assert 0 <= data["miou"] <= 1 and len(data["per_class_iou"]) == 10
    ckpt = torch.load(weights, weights_only=True)
    assert ckpt["arch"] == data["arch"] and ckpt["result"]["miou"] == data["miou"]


def test_train_failure_exits_nonzero_with_the_reason(run):
    r = run(
        "train",
        "lpsnet_tiny",
        "--dataset",
        "synthetic:size=64x128,train=8,val=4",
        "--iters",
        "20",
        "--batch",
        "2",
        "--crop",
        "64x96",
        "--lr",
        "1e9",
        "--quiet",
    )
    assert r.exit_code == 1
    assert "FAILED" in r.output and "loss became" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dataset", "cityscapes:/nonexistent"), "/nonexistent"),
        (("--dataset", "imagenet"), "unknown dataset 'imagenet'"),
        (("--dataset", "synthetic:colour=1"), "unknown option 'colour'"),
        (("--device", "cuda:0"), "CUDA is not available"),
        (("--crop", "1x1"), "too small"),
    ],
)
def test_train_bad_input_is_one_line(run, args, message):
    r = run("train", "lpsnet_tiny", "--iters", "1", *args)
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr


def test_a_worker_pointed_at_a_missing_journal_says_so_in_one_line(tmp_path):
    (tmp_path / "study.journal").write_text("")
    for url, message in (
        (f"journal:{tmp_path / 'nope' / 'study.journal'}", "no such folder"),
        (f"journal:{tmp_path / 'stdy.journal'}", "no such journal (that folder holds study.journal)"),
    ):
        result = CliRunner().invoke(main, ["worker", "--storage", url, "--study", "s", "--max-idle", "1"])
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1 and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.journal"]
