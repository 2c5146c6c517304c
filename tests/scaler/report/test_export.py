from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import run_builder as runs
import torch
from click.testing import CliRunner

from models import LPSNet, LPSNetArch, load_arch_json, reparameterize, resolve_arch
from scaler.cli import main
from scaler.report import trials_frame
from scaler.report.export import ExportError, export_trial, parse_formats, select_trial


@pytest.fixture
def run(tmp_path: Path):
    run_dir = tmp_path / "run"
    return run_dir, runs.make_greedy_run(run_dir, weights=(4,))


def _frame(rows: list[tuple[int, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "number": [r[0] for r in rows],
            "state": [r[1] for r in rows],
            "latency_ms": [r[2] for r in rows],
            "miou": [r[3] for r in rows],
            "reference": [None] * len(rows),
            "fail_reason": [None if r[1] != "FAIL" else "out of memory" for r in rows],
        }
    )


TABLE = _frame(
    [
        (0, "COMPLETE", 1.0, 0.20),
        (1, "COMPLETE", 2.0, 0.30),
        (2, "COMPLETE", 1.5, 0.30),
        (3, "FAIL", 0.5, float("nan")),
        (4, "COMPLETE", 3.0, 0.40),
        (5, "COMPLETE", 3.0, 0.40),
    ]
)


def test_select_by_max_latency():
    assert select_trial(TABLE, max_latency_ms=2.5) == (2, "the best mIoU within 2.5 ms")
    assert select_trial(TABLE, max_latency_ms=3.0)[0] == 4  # tie on both: the lower number
    assert select_trial(TABLE, max_latency_ms=1.0)[0] == 0
    with pytest.raises(ExportError, match=r"no complete trial within 0\.9 ms; the fastest is trial 0 at 1\.000 ms"):
        select_trial(TABLE, max_latency_ms=0.9)


def test_select_by_min_miou():
    assert select_trial(TABLE, min_miou=0.25) == (2, "the fastest reaching mIoU 25.00%")
    assert select_trial(TABLE, min_miou=0.4)[0] == 4
    with pytest.raises(ExportError, match=r"no complete trial reaches mIoU 50\.00%; the best is trial 4 at 3\.000 ms"):
        select_trial(TABLE, min_miou=0.5)


def test_select_by_number_and_rule_errors():
    assert select_trial(TABLE, trial=1) == (1, "trial 1 as asked")
    with pytest.raises(ExportError, match=r"trial 3 is FAIL: out of memory"):
        select_trial(TABLE, trial=3)
    with pytest.raises(ExportError, match=r"trial 9 is not in this run \(trials 0-5\)"):
        select_trial(TABLE, trial=9)
    with pytest.raises(ExportError, match="exactly one"):
        select_trial(TABLE)
    with pytest.raises(ExportError, match="exactly one"):
        select_trial(TABLE, trial=1, min_miou=0.1)
    with pytest.raises(ExportError, match="no complete trial in this run yet"):
        select_trial(TABLE[TABLE["state"] == "FAIL"], max_latency_ms=5.0)


def test_automatic_rules_skip_reference_models(run):
    _, store = run
    df = trials_frame(store)
    assert select_trial(df, max_latency_ms=100.0)[0] == 4  # not the 50 ms lpsnet_s reference
    assert select_trial(df, trial=8)[0] == 8


def test_parse_formats():
    assert parse_formats("json, ONNX,json") == ("json", "onnx")
    assert parse_formats(["pt"]) == ("pt",)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        parse_formats("json,tflite")
    with pytest.raises(ExportError, match="no export format"):
        parse_formats("")


def test_export_json_round_trips(run, tmp_path):
    run_dir, store = run
    result = export_trial(run_dir, tmp_path / "out", formats="json", trial=2, store=store)
    arch = load_arch_json(tmp_path / "out" / "arch.json")
    assert arch.arch_hash() == runs.A_WIDTH.arch_hash() == result.arch.arch_hash()
    assert resolve_arch(str(tmp_path / "out" / "arch.json")) == runs.A_WIDTH
    assert set(result.files) == {"json"} and result.checks == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["MODEL_CARD.md", "arch.json"]


def _reference_output(arch: LPSNetArch, state_dict: dict | None, x: torch.Tensor) -> torch.Tensor:
    model = LPSNet(arch)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    with torch.no_grad():
        return reparameterize(model.eval())(x, upsample=False)


def test_export_onnx_checked_with_onnxruntime(run, tmp_path):
    import onnxruntime as ort

    run_dir, store = run
    result = export_trial(run_dir, tmp_path / "out", formats=["onnx"], trial=4, store=store)
    check = result.checks["onnx"]
    assert check["max_abs_diff"] <= check["tolerance"] and check["opset"] == 17
    assert result.weights.startswith("proxy-trained") and result.input_shape == (1, 3, *runs.INPUT_HW)
    # The ONNX model computes the trained network (not a fresh one) on any input.
    x = torch.randn(1, 3, *runs.INPUT_HW, generator=torch.Generator().manual_seed(7))
    weights = torch.load(run_dir / "weights" / "trial_4.pt", weights_only=True)["state_dict"]
    ref = _reference_output(runs.A_WD, weights, x)
    session = ort.InferenceSession(str(result.files["onnx"]), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    assert out.shape == (1, 4, *runs.A_WD.head_size(*runs.INPUT_HW))
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=1e-4)


def test_export_onnx_with_upsample(run, tmp_path):
    run_dir, store = run
    result = export_trial(run_dir, tmp_path / "out", formats="onnx", trial=0, upsample=True, store=store)
    import onnx

    model = onnx.load(str(result.files["onnx"]))
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 4, *runs.INPUT_HW] and result.include_upsample
    assert "with the final upsample" in result.model_card.read_text()


def test_export_onnx_with_a_free_batch_runs_at_any_batch(run, tmp_path):
    import onnx
    import onnxruntime as ort

    run_dir, store = run
    result = export_trial(run_dir, tmp_path / "out", formats="onnx", trial=4, dynamic_axes="batch", store=store)
    assert result.dynamic_axes == ("batch",) and result.checks["onnx"]["checked_batches"] == [1, 3]
    model = onnx.load(str(result.files["onnx"]))
    image = model.graph.input[0].type.tensor_type.shape.dim
    assert image[0].dim_param == "batch" and [d.dim_value for d in image[1:]] == [3, *runs.INPUT_HW]
    # The trained network, at a batch size the export check did not use.
    x = torch.randn(5, 3, *runs.INPUT_HW, generator=torch.Generator().manual_seed(7))
    weights = torch.load(run_dir / "weights" / "trial_4.pt", weights_only=True)["state_dict"]
    session = ort.InferenceSession(str(result.files["onnx"]), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    assert out.shape == (5, 4, *runs.A_WD.head_size(*runs.INPUT_HW))
    np.testing.assert_allclose(out, _reference_output(runs.A_WD, weights, x).numpy(), atol=1e-4, rtol=1e-4)
    assert "float32 Nx3x48x80 (batch N free; checked at batches 1 and 3)" in result.model_card.read_text()
    # The default keeps the one shape the run timed.
    fixed = export_trial(run_dir, tmp_path / "fixed", formats="onnx", trial=4, store=store)
    dims = onnx.load(str(fixed.files["onnx"])).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, *runs.INPUT_HW] and fixed.dynamic_axes == ()


def test_export_at_another_input_size(run, tmp_path):
    import onnxruntime as ort

    run_dir, store = run
    result = export_trial(
        run_dir, tmp_path / "out", formats="onnx,torchscript", trial=4, input_size=(96, 160), store=store
    )
    assert result.input_shape == (1, 3, 96, 160) and result.timed_shape == (1, 3, *runs.INPUT_HW)
    x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(7))
    weights = torch.load(run_dir / "weights" / "trial_4.pt", weights_only=True)["state_dict"]
    session = ort.InferenceSession(str(result.files["onnx"]), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    assert out.shape == (1, 4, *runs.A_WD.head_size(96, 160))
    np.testing.assert_allclose(out, _reference_output(runs.A_WD, weights, x).numpy(), atol=1e-4, rtol=1e-4)
    # A size at which a path would get no pixels is refused, naming the trial and the size.
    with pytest.raises(ExportError, match=r"trial 4 .*: input 1x1 is too small for resolution factor 0.5"):
        export_trial(run_dir, tmp_path / "tiny", formats="onnx", trial=4, input_size=(1, 1), store=store)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_torchscript_reloads_to_the_same_output(run, tmp_path):
    run_dir, store = run
    result = export_trial(run_dir, tmp_path / "out", formats="torchscript", trial=2, store=store)
    assert result.checks["torchscript"]["max_abs_diff"] <= result.checks["torchscript"]["tolerance"]
    assert result.weights.startswith("random initialisation")
    loaded = torch.jit.load(str(result.files["torchscript"]))
    x = torch.randn(1, 3, *runs.INPUT_HW, generator=torch.Generator().manual_seed(3))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = _reference_output(runs.A_WIDTH, LPSNet(runs.A_WIDTH).state_dict(), x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref, atol=1e-5, rtol=1e-5)


def test_export_pt_weights(run, tmp_path):
    run_dir, store = run
    result = export_trial(run_dir, tmp_path / "out", formats="json,pt", max_latency_ms=3.0, store=store)
    assert result.trial == 4 and result.selected_by == "the best mIoU within 3 ms"
    blob = torch.load(result.files["pt"], weights_only=True)
    arch = load_arch_json(result.files["json"])
    model = LPSNet(arch)
    model.load_state_dict(blob["state_dict"])
    kept = torch.load(run_dir / "weights" / "trial_4.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(blob["state_dict"][k], v) for k, v in kept.items())


def test_export_pt_without_kept_weights_is_an_error(run, tmp_path):
    run_dir, store = run
    with pytest.raises(ExportError, match="trial 2 has no kept weights"):
        export_trial(run_dir, tmp_path / "out", formats="json,pt", trial=2, store=store)
    assert not (tmp_path / "out").exists()


def test_missing_weights_file_is_an_error(run, tmp_path):
    run_dir, store = run
    (run_dir / "weights" / "trial_4.pt").unlink()
    with pytest.raises(ExportError, match="trial 4's weights file is missing"):
        export_trial(run_dir, tmp_path / "out", formats="onnx", trial=4, store=store)


def test_weights_recorded_relative_to_the_cwd_are_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = Path("runs/a")
    # As a search given a relative --out records them: RUN/weights/..., relative to where it ran.
    store = runs.make_run(run_dir, runs.GREEDY_TRIALS[:5], weights=(4,), weights_prefix="runs/a/")
    assert store.trials()[4].user_attrs["weights"] == "runs/a/weights/trial_4.pt"
    result = export_trial(run_dir, "out", formats="pt", trial=4, store=store)
    assert result.files["pt"].is_file()


def test_model_card(run, tmp_path):
    run_dir, store = run
    result = export_trial(run_dir, tmp_path / "out", formats="json,onnx", trial=4, store=store)
    card = result.model_card.read_text()
    for part in (
        runs.A_WD.inline(),
        "| depth (blocks) | 1 | 2 | 2 | 2 | 2 |",
        "parameters: ",
        "MACs: ",
        "**3.000 ms**",
        "| device_name | `Test CPU 9000` |",
        "| include_upsample | `False` |",
        "without the final upsample",
        "mIoU **33.00%**",
        "`synthetic`",
        "| iters | `20` |",
        "| road |",
        "step 2, parent trial 2, operators depth_2-5 x1",
        "`model.onnx`",
        "max abs diff",
        "proxy-trained weights kept by the run",
        "trial 4, chosen as trial 4 as asked",
        str(run_dir),
    ):
        assert part in card, part


def test_every_format_at_once(run, tmp_path):
    run_dir, store = run
    result = export_trial(run_dir, tmp_path / "out", formats="json,onnx,torchscript,pt", trial=4, store=store)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["MODEL_CARD.md", "arch.json", "model.onnx", "model.torchscript.pt", "weights.pt"]
    assert set(result.checks) == {"onnx", "torchscript", "pt"}
    assert json.loads(json.dumps(result.to_dict()))["files"]["onnx"].endswith("model.onnx")


def test_cli_export(run, tmp_path):
    run_dir, _ = run
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(main, ["export", str(run_dir), "--min-miou", "30", "--format", "json,onnx", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"trial 2 of {run_dir} (the fastest reaching mIoU 30.00%)")
    assert "max abs diff vs PyTorch" in r.output and "random initialisation" in r.output
    r = runner.invoke(main, ["export", str(run_dir), "--trial", "4", "--format", "pt", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["trial"] == 4 and data["files"]["pt"] == str(out / "weights.pt")
    args = ["export", str(run_dir), "--trial", "4", "--format", "onnx", "-o", str(out)]
    r = runner.invoke(main, [*args, "--dynamic-axes", "batch", "--input-size", "96x160"])
    assert r.exit_code == 0, r.output
    assert "  exported at  input 1x3x96x160 (the latency above is the run's)" in r.output
    assert "batch free (checked at 1 and 3)" in r.output
    help_text = runner.invoke(main, ["export", "--help"]).output
    assert "Height and width are always fixed" in help_text and "int(H*r) x int(W*r)" in help_text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-latency", "0.5"], "error: no complete trial within 0.5 ms; the fastest is trial 0 at 1.000 ms"),
        (["--min-miou", "90"], "error: no complete trial reaches mIoU 90.00%; the best is trial 4"),
        (["--trial", "3"], "error: trial 3 is FAIL: non-finite loss at iteration 3"),
        ([], "error: choose the trial with exactly one of --trial N, --max-latency MS or --min-miou X"),
        (["--trial", "1", "--max-latency", "3"], "error: choose the trial with exactly one"),
        (["--trial", "1", "--format", "pt"], "error: trial 1 has no kept weights"),
        (["--trial", "1", "--format", "xml"], "error: unknown export format 'xml'"),
        (["--trial", "1", "--format", "onnx", "--input-size", "1x1"], "error: trial 1 (lpsnet:"),
    ],
)
def test_cli_export_errors(run, tmp_path, args, message):
    run_dir, _ = run
    r = CliRunner().invoke(main, ["export", str(run_dir), *args, "-o", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(message) and len(r.output.strip().splitlines()) == 1


def test_cli_export_missing_run(tmp_path):
    r = CliRunner().invoke(main, ["export", str(tmp_path / "nope"), "--trial", "0", "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and r.output.strip() == f"error: {tmp_path / 'nope'}: no such run folder"
    assert not (tmp_path / "out").exists()
