"""Language-guided heads through the tool: training, latency, the search space, a search, export and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from paired_standin import FakePaired
from stripes import Stripes

import scaler.search.run as search_mod
from models import HeadConfig, LPSNetArch, build_model, class_embeddings, save_embeddings
from scaler.cli import main
from scaler.measure import LatencySettings, measure_latency
from scaler.proxy.data import open_dataset
from scaler.proxy.train import TrainConfig, train_and_evaluate
from scaler.report.export import export_trial
from scaler.search.run import run_search
from scaler.search.space import SpaceError, load_space
from scaler.search.store import open_run

SMALL = LPSNetArch(depth=(1, 1, 1, 1, 1), width=(8, 8, 16, 16, 16), resolution=(1,))
FAST = {"warmup": 1, "min_samples": 3, "max_samples": 6, "time_cap_s": 1.0, "threads": 1, "max_others_share": None}
SYNTHETIC = "synthetic:size=64x128,train=8,val=4"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "latency-cache"))
    monkeypatch.setenv("LPS_SCALER_TEXT_CACHE", str(tmp_path / "text-cache"))


def _embeddings_file(tmp_path: Path, names: list[str], dim: int = 32) -> str:
    emb = torch.randn(len(names), dim, generator=torch.Generator().manual_seed(7))
    return f"file:{save_embeddings(tmp_path / 'classes.pt', emb, names)}"


@pytest.mark.parametrize("kind", ["denseclip", "fusion"])
def test_training_a_language_guided_head_learns(tmp_path, kind, monkeypatch):
    encoder = _embeddings_file(tmp_path, ["red", "green", "blue"])
    arch = LPSNetArch(
        depth=SMALL.depth,
        width=SMALL.width,
        resolution=SMALL.resolution,
        head=HeadConfig(kind=kind, text_encoder=encoder),
    )
    aux_calls = []
    real = type(build_model(arch)).forward_with_aux

    def counted(self, x):
        out = real(self, x)
        aux_calls.append(out[1] is not None)
        return out

    monkeypatch.setattr(type(build_model(arch)), "forward_with_aux", counted)
    config = TrainConfig(dataset="stripes", iters=60, batch=4, crop=(32, 48), lr=0.05, seed=0, jitter=0.1)
    save = tmp_path / "w.pt"
    r = train_and_evaluate(arch, config, progress=False, train_set=Stripes(), val_set=Stripes(n=6, seed=99), save=save)
    assert r.ok, r.reason
    assert r.miou > 0.7 and r.loss_last < 0.5 * r.loss_first  # chance is about 0.2
    # The auxiliary loss is trained when the head has one (fusion), not otherwise.
    assert aux_calls == ([True] * 60 if kind == "fusion" else [])
    blob = torch.load(save, weights_only=True)
    assert blob["class_names"] == ["red", "green", "blue"]
    model = build_model(arch)
    model.load_state_dict(blob["state_dict"])
    torch.testing.assert_close(model.head.class_embeddings, class_embeddings(encoder, ["red", "green", "blue"]))


def test_latency_of_a_language_guided_network_and_its_onnx_form():
    settings = LatencySettings(input_hw=(64, 128), **FAST)
    plain = measure_latency("lpsnet_tiny", settings)
    fused = measure_latency("lpsnet_tiny+fusion", settings)
    assert fused.cache_key != plain.cache_key and fused.arch.head.kind == "fusion"
    assert fused.to_dict()["arch"]["head"]["kind"] == "fusion"
    # onnxruntime runs the exported network (class embeddings baked in) and matches PyTorch.
    ort = measure_latency("mobilenetv2_050+fusion", dataclasses.replace(settings, backend="onnxruntime"))
    assert ort.output_max_abs_diff is not None and ort.output_max_abs_diff < 1e-3


def _space_file(tmp_path: Path, head: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(
        f"""\
name: lang
start: lpsnet_tiny
input_size: 64x128
dataset: {SYNTHETIC}
head: {head}
constraints: {{width_divisor: 4, max_depth: 4, max_width: 64}}
latency: {{device: cpu, threads: 1, min_samples: 3, max_samples: 6, time_cap_s: 0.3, max_others_share: null}}
training: {{iters: 4, batch: 2, crop: 64x96, lr: 0.05, seed: 0}}
stopping: {{max_steps: 1}}
"""
    )
    return p


def test_space_head_key(tmp_path):
    space = load_space(_space_file(tmp_path, "{kind: fusion, dim: 32, heads: 4, layers: 1}"))
    assert space.start.head == HeadConfig(kind="fusion", dim=32)
    assert space.to_dict()["start"]["head"]["kind"] == "fusion"
    assert load_space(_space_file(tmp_path, "denseclip")).start.head.kind == "denseclip"
    # An embeddings file named in the space file is found next to it, as an arch.json start is.
    relative = load_space(_space_file(tmp_path, "{kind: denseclip, text_encoder: 'file:emb.pt'}"))
    assert relative.start.head.text_encoder == f"file:{tmp_path / 'emb.pt'}"
    with pytest.raises(SpaceError, match=r"space.yaml: head: .*unknown key 'size'"):
        load_space(_space_file(tmp_path, "{kind: fusion, size: 3}"))
    with pytest.raises(SpaceError, match=r"space.yaml: head: head kind must be one of plain, denseclip, fusion"):
        load_space(_space_file(tmp_path, "clip"))
    p = _space_file(tmp_path, "denseclip")
    p.write_text(p.read_text().replace("start: lpsnet_tiny", "start: lpsnet_tiny+fusion"))
    with pytest.raises(SpaceError, match="has a head already; give it in one place"):
        load_space(p)
    p.write_text(p.read_text().replace("start: lpsnet_tiny+fusion", "start: mobilenetv2_050"))
    with pytest.raises(SpaceError, match="is not an LPS-Net: the search grows LPS-Nets"):
        load_space(p)


class _Fake:
    def __init__(self, ms: float) -> None:
        self.ms = ms

    def to_dict(self):
        return {"median_ms": self.ms, "p10_ms": self.ms, "p90_ms": self.ms, "fingerprint": {"device": "fake"}}


@pytest.mark.slow
def test_search_and_export_with_a_fusion_head(tmp_path, monkeypatch):
    monkeypatch.setattr(
        search_mod,
        "measure_latency",
        lambda arch, settings, **kw: _Fake(
            sum(arch.depth) * 0.1 + sum(arch.width) * 0.01 + 4 * sum(r * r for r in arch.resolution)
        ),
    )
    monkeypatch.setattr(search_mod, "measure_paired", FakePaired())  # the same model, timed together
    names = list(open_dataset(SYNTHETIC, "val", seed=0).info.class_names)
    encoder = _embeddings_file(tmp_path, names)
    space = load_space(_space_file(tmp_path, f"{{kind: fusion, dim: 16, heads: 2, text_encoder: '{encoder}'}}"))
    summary = run_search(space, tmp_path / "run", keep_weights=True, progress=False)
    trials = open_run(tmp_path / "run").trials()
    assert summary.complete == len(trials) > 1
    assert all(t.user_attrs["arch"]["head"]["kind"] == "fusion" for t in trials)  # expansions keep the head
    best = max(trials, key=lambda t: t.values[1]).number
    result = export_trial(tmp_path / "run", tmp_path / "out", formats="json,onnx,pt", trial=best)
    graph = onnx.load(str(result.files["onnx"])).graph
    assert [i.name for i in graph.input] == ["image"]  # the class embeddings are constants, not inputs
    assert result.checks["onnx"]["max_abs_diff"] <= result.checks["onnx"]["tolerance"]
    card = result.model_card.read_text()
    assert "head: fusion (language-guided" in card and "baked into the exported ONNX" in card
    blob = torch.load(result.files["pt"], weights_only=True)
    assert blob["class_names"] == names
    model = build_model(result.arch)
    model.load_state_dict(blob["state_dict"])
    assert model.head.num_classes == len(names)
    arch_json = json.loads(result.files["json"].read_text())
    assert arch_json["head"]["text_encoder"] == encoder


def test_search_with_an_encoder_that_cannot_load_stops_before_the_run(tmp_path):
    p = _space_file(tmp_path, f"{{kind: denseclip, text_encoder: 'file:{tmp_path / 'missing.pt'}'}}")
    result = CliRunner().invoke(main, ["search", "--space", str(p), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "missing.pt does not exist" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_cli_info_models_and_train_with_heads(tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["info", "lpsnet_tiny+fusion", "--input", "128x256"]).output
    assert "head         fusion (language-guided: class names embedded by 'minilm'" in out
    out = runner.invoke(main, ["info", "mobilenetv2_050", "--input", "128x256"]).output
    assert "backbone     MobileNetV2-style, width x0.5 (output stride 16)" in out and "head         plain" in out
    out = runner.invoke(main, ["models"]).output
    assert "mobilenetv2_050  mobilenetv2:m=0.5" in out and "NAME+denseclip or NAME+fusion" in out
    names = list(open_dataset(SYNTHETIC, "val", seed=0).info.class_names)
    arch = LPSNetArch(
        depth=SMALL.depth,
        width=SMALL.width,
        resolution=SMALL.resolution,
        head=HeadConfig(kind="denseclip", text_encoder=_embeddings_file(tmp_path, names)),
    )
    (tmp_path / "arch.json").write_text(arch.to_json())
    result = runner.invoke(
        main,
        ["train", str(tmp_path / "arch.json"), "--dataset", SYNTHETIC, "--iters", "3", "--crop", "64x96", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["status"] == "ok" and data["arch"]["head"]["kind"] == "denseclip"
