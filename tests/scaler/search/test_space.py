from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from models import HeadConfig, get_arch
from scaler.search.expand import PAPER_OPERATORS
from scaler.search.space import SpaceError, load_space, space_from_dict

SPACES = Path(__file__).resolve().parents[3] / "search_spaces"

MINIMAL = """\
name: t
start: lpsnet_tiny
input_size: 64x128
dataset: synthetic:size=64x128,train=8,val=4
"""


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["lpsnet_demo.yaml", "lpsnet_paper.yaml"])
def test_shipped_spaces_load(name):
    space = load_space(SPACES / name)
    assert space.start == get_arch("lpsnet_tiny")
    assert space.operators == PAPER_OPERATORS
    assert space.training.eval_size == space.input_size


def test_demo_space_trains_small_and_times_large():
    space = load_space(SPACES / "lpsnet_demo.yaml")
    assert space.input_size == (128, 256) and space.training.crop == (128, 256)
    assert space.latency.input_hw == (512, 1024)
    assert load_space(SPACES / "lpsnet_paper.yaml").latency.input_hw == (1024, 2048)


def test_demo_space_without_its_latency_size_is_the_committed_runs():
    # The latency size and the tie seed are the only changes to the demo space since
    # results/reference/lpsnet_demo_128x256 was made: without them, the space hashes as that run's run.json records.
    data = yaml.safe_load((SPACES / "lpsnet_demo.yaml").read_text())
    assert data["latency"].pop("input_size") == "512x1024"
    assert data["greedy"].pop("tie_seed") == 1
    recorded = json.loads((SPACES.parent / "results" / "reference" / "lpsnet_demo_128x256" / "run.json").read_text())
    assert space_from_dict(data).space_hash() == recorded["space_hash"] == "b5e5f7697c30"
    assert load_space(SPACES / "lpsnet_demo.yaml").space_hash() != "b5e5f7697c30"


def test_paper_space_is_the_papers_setting():
    space = load_space(SPACES / "lpsnet_paper.yaml")
    assert space.input_size == (1024, 2048)
    assert space.stopping.max_steps == 14
    assert space.dataset.startswith("cityscapes:")
    assert space.latency.batch == 1 and space.latency.dtype == "fp32" and not space.latency.include_upsample


def test_minimal_space_defaults(tmp_path):
    space = load_space(_write(tmp_path, MINIMAL))
    assert space.name == "t" and space.input_size == (64, 128)
    assert space.constraints.max_paths == 3 and space.greedy.noise_floor_ms == 0.05
    assert space.training.dataset == "synthetic:size=64x128,train=8,val=4"


def test_round_trip_through_to_dict(tmp_path):
    space = load_space(SPACES / "lpsnet_demo.yaml")
    again = space_from_dict(space.to_dict())
    assert again.to_dict() == space.to_dict()
    assert again.space_hash() == space.space_hash()
    assert space.diff(space.to_dict()) is None


def test_diff_names_the_first_changed_key(tmp_path):
    a = load_space(_write(tmp_path, MINIMAL + "training: {iters: 10}\n"))
    b = load_space(_write(tmp_path, MINIMAL + "training: {iters: 20}\n"))
    assert b.diff(a.to_dict()) == "training.iters: 10 -> 20"


def test_operators_by_name_and_custom(tmp_path):
    text = MINIMAL + (
        "operators:\n  - depth_2-5\n  - {name: wide_last, kind: width, delta: [0, 0, 0, 0, 16]}\n"
        "  - {name: half_path, kind: resolution, path: 2, step: 0.25}\n"
    )
    ops = load_space(_write(tmp_path, text)).operators
    assert [op.name for op in ops] == ["depth_2-5", "wide_last", "half_path"]
    assert ops[1].delta == (0, 0, 0, 0, 16) and ops[2].step == 0.25


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("colour: red\n", "colour: unknown key (allowed: name, description, start"),
        ("latency: {threads: two}\n", "latency.threads: must be an integer, got 'two'"),
        ("latency: {backend: tvm}\n", "latency: unknown latency backend 'tvm'"),
        ("latency: {input_hw: 1x1}\n", "latency.input_hw: unknown key (allowed: input_size, device"),
        ("latency: {input_size: big}\n", "latency.input_size: must be HxW such as 256x512 (or [H, W]), got 'big'"),
        (
            "latency: {input_size: 1x2}\n",
            "latency.input_size: 1x2 cannot be measured for lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5: "
            "input 1x2 is too small for resolution factor 0.5",
        ),
        ("training: {crop: 12}\n", "training.crop: must be HxW such as 256x512"),
        ("training: {iters: 0}\n", "training: iters must be >= 1, got 0"),
        ("training: {dataset: x}\n", "training.dataset: unknown key"),
        ("stopping: {max_steps: 0}\n", "stopping: max_steps must be >= 1, got 0"),
        ("constraints: {max_paths: 4}\n", "constraints: max_paths must be 1..3, got 4"),
        ("constraints: {width_divisor: 8}\n", "start: lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5 breaks the constraints"),
        ("operators: [depth_9]\n", "operators[0]: unknown operator 'depth_9'"),
        ("operators: [depth_2-5, depth_2-5]\n", "operator name 'depth_2-5' used twice"),
        ("operators: [{name: z, kind: width, delta: [0, 0, 0, 0, 0]}]\n", "operators[0]: operator 'z'"),
        ("greedy: {noise_floor_ms: 0}\n", "greedy: noise_floor_ms must be > 0"),
        (
            "operators: [{name: head_f, kind: head, head: {kind: fusion, dim: 4}}]\n",
            "operators[0].head: operator 'head_f': head dim must be an integer >= 8, got 4",
        ),
        (
            "operators: [{name: head_f, kind: head, head: fuson}]\n",
            "operators[0].head: operator 'head_f': head kind must be one of plain, denseclip, fusion, got 'fuson'",
        ),
        (
            "operators: [depth_2-5, {name: head_f, kind: head, head: {kind: fusion, size: 9}}]\n",
            "operators[1].head: operator 'head_f': unknown key 'size' (allowed: ablate, aux_weight, dim",
        ),
        ("operators: [{name: head_f, kind: head}]\n", "operators[0]: operator 'head_f': head missing"),
        ("operators: [{name: head_f, kind: head, head: fusion, steplen: 2}]\n", "operators[0].steplen: unknown key"),
        (
            "operators: [{name: d, kind: depth, delta: [0, 0, 0, 1, 1], head: fusion}]\n",
            "operators[0].head: unknown key (allowed: name, kind, delta)",
        ),
    ],
)
def test_bad_values_name_file_key_and_value(tmp_path, extra, message):
    p = _write(tmp_path, MINIMAL + extra)
    with pytest.raises(SpaceError) as e:
        load_space(p)
    text = str(e.value)
    assert text.startswith(f"{p}: ")
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: t\nstart: lpsnet_tiny\ndataset: synthetic\n", "input_size: missing (required)"),
        ("name: t\nstart: lpsnet_xl\ninput_size: 64x128\ndataset: synthetic\n", "start: unknown architecture"),
        ("name: t\nstart: lpsnet_tiny\ninput_size: 1x2\ndataset: synthetic\n", "input_size: input 1x2 is too small"),
        (
            "name: t\nstart: lpsnet_tiny\ninput_size: 0x0\ndataset: synthetic\n",
            "input_size: must be HxW such as 256x512 (or [H, W]); YAML read it as the number 0",
        ),
        ("name: [t\n", "not valid YAML at line"),
        ("- a\n- b\n", "expected a mapping of keys"),
    ],
)
def test_bad_files(tmp_path, text, message):
    with pytest.raises(SpaceError, match=None) as e:
        load_space(_write(tmp_path, text))
    assert message in str(e.value)


def test_missing_file():
    with pytest.raises(SpaceError, match="cannot read search space"):
        load_space("/nonexistent/space.yaml")


def test_head_operators_by_kind_or_mapping_with_their_embeddings_file_beside_the_space(tmp_path):
    text = MINIMAL + (
        "operators:\n  - depth_2-5\n  - {name: head_denseclip, kind: head, head: denseclip}\n"
        "  - name: head_fusion\n    kind: head\n"
        "    head: {kind: fusion, dim: 32, heads: 2, text_encoder: 'file:emb/classes.pt'}\n"
    )
    space = load_space(_write(tmp_path, text))
    ops = {op.name: op for op in space.operators}
    assert [op.kind for op in space.operators] == ["depth", "head", "head"]
    assert ops["head_denseclip"].head == HeadConfig(kind="denseclip")
    fusion = ops["head_fusion"].head
    assert (fusion.kind, fusion.dim, fusion.heads) == ("fusion", 32, 2)
    assert fusion.text_encoder == f"file:{tmp_path / 'emb' / 'classes.pt'}"  # found next to the space file
    assert space.start.head == HeadConfig()  # the start keeps its own head
    stored = space.to_dict()["operators"][2]
    assert stored == {"name": "head_fusion", "kind": "head", "head": fusion.to_dict()}
    assert space_from_dict(yaml.safe_load(text), base_dir=tmp_path).space_hash() == space.space_hash()


def test_start_arch_json_relative_to_the_space_file(tmp_path):
    (tmp_path / "start.json").write_text(get_arch("lpsnet_m").to_json())
    text = MINIMAL.replace("start: lpsnet_tiny", "start: start.json")
    assert load_space(_write(tmp_path, text)).start == get_arch("lpsnet_m")


# -- a latency input size of its own -------------------------------------------------------------


def test_latency_input_size_defaults_to_the_training_size_and_stays_out_of_the_hash(tmp_path):
    plain = load_space(_write(tmp_path, MINIMAL + "latency: {threads: 1}\n"))
    same = load_space(_write(tmp_path, MINIMAL + "latency: {threads: 1, input_size: 64x128}\n"))
    assert plain.latency.input_hw == same.latency.input_hw == (64, 128)
    assert "input_size" not in plain.to_dict()["latency"]
    # Written out but equal to the training size: the same measurement, the same run.
    assert same.to_dict() == plain.to_dict() and same.space_hash() == plain.space_hash()


def test_latency_input_size_of_its_own_is_measured_and_changes_the_hash(tmp_path):
    plain = load_space(_write(tmp_path, MINIMAL + "latency: {threads: 1}\n"))
    big = load_space(_write(tmp_path, MINIMAL + "latency: {threads: 1, input_size: [256, 512]}\n"))
    assert big.input_size == (64, 128) and big.training.eval_size == (64, 128)
    assert big.latency.input_hw == (256, 512)
    assert big.to_dict()["latency"]["input_size"] == [256, 512]
    assert big.space_hash() != plain.space_hash()
    assert big.diff(plain.to_dict()) == "latency.input_size: null -> [256, 512]"
    again = space_from_dict(big.to_dict())
    assert again.latency.input_hw == (256, 512) and again.space_hash() == big.space_hash()


def test_existing_space_files_keep_their_hashes():
    # Pinned as the committed runs and users' run folders record them: a new optional key must not
    # change what identifies a run made before it.
    hashes = {
        "lpsnet_paper.yaml": "ac9c0d62112a",
        "lpsnet_synthetic_gpu.yaml": "7af47b780b86",
    }
    for name, expected in hashes.items():
        assert load_space(SPACES / name).space_hash() == expected, name


def test_a_latency_size_too_small_for_a_path_the_operators_can_add_is_one_line():
    data = yaml.safe_load((SPACES / "lpsnet_demo.yaml").read_text())
    data["latency"]["input_size"] = "4x400"  # the start (r=0.5) takes it; a new path at 1/8 would see 0x50
    with pytest.raises(SpaceError) as e:
        space_from_dict(data)
    assert str(e.value) == (
        "search space: latency.input_size: 4x400 is too small for a path the operators can add (factor 0.125 "
        "gives a 0x50 input); use at least 8x8, or constraints.max_paths to forbid new paths"
    )
    data["constraints"]["max_paths"] = 1  # no new path can be added: the size is fine
    assert space_from_dict(data).latency.input_hw == (4, 400)
