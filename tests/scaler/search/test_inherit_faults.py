"""Inherited training when a parent's weights are lost (issue 12, "Bad input and faults"): the candidate
trains from scratch with the reason recorded, or fails with it under ``training.inherit_missing: fail``;
a shared artifact store (S3 through moto, or a folder); a search SIGKILLed mid-run and resumed."""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fake_search import FakeLatency, fake_train_saving, inherit_space, tiny_space
from optuna.trial import TrialState
from paired_standin import FakePaired
from run_builder import A_DEPTH, TINY, fake_latency, make_run

import scaler.search.run as run_mod
import scaler.search.worker as worker_mod
from scaler.cli import main
from scaler.errors import UserError
from scaler.proxy.train import TrainConfig
from scaler.report import summarize_run
from scaler.report.model_card import model_card
from scaler.report.render import format_frontier
from scaler.search.expand import Constraints
from scaler.search.inherit import ARTIFACTS_ATTR, artifact_store, artifacts_url, run_artifacts
from scaler.search.record import TrialRecord
from scaler.search.run import run_search
from scaler.search.space import SpaceError, space_from_dict
from scaler.search.store import RunStore, distributions, open_run
from scaler.search.worker import evaluate_claim

REPO = Path(__file__).resolve().parents[3]
INHERIT = TrainConfig(iters=4, batch=2, init="inherit")


class Trainer:
    """:func:`fake_train_saving`, remembering per architecture whether it started from given weights."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, str]] = []

    def __call__(self, arch: Any, config: TrainConfig, **kw: Any) -> Any:
        self.calls.append((arch.inline(), kw.get("init_state") is not None, config.init))
        return fake_train_saving(arch, config, **kw)


def _parent_and_child(run_dir: Path, monkeypatch: pytest.MonkeyPatch, training: TrainConfig = INHERIT, **kw: Any):
    """A run whose start (#0) trained with its weights kept, and a queued depth candidate (#1) inheriting them."""
    trainer = Trainer()
    monkeypatch.setattr(worker_mod, "train_and_evaluate", trainer)
    child = {"step": 1, "parent": 0, "inherit_from": 0, "operators": ("depth_2-5",), "steplen": 1}
    store = make_run(
        run_dir,
        [
            {"arch": TINY, "waiting": True, "attrs": {"latency": fake_latency(TINY, 1.0)}},
            {"arch": A_DEPTH, "waiting": True, "attrs": {**child, "latency": fake_latency(A_DEPTH, 1.8)}},
        ],
    )
    assert evaluate_claim(store, store.claim(), training, run_dir=run_dir, **kw)
    parent = store.records()[0]
    assert parent.weights_artifact is not None
    return store, parent, trainer


def _evaluate_child(store: RunStore, run_dir: Path, training: TrainConfig = INHERIT, **kw: Any):
    lines: list[str] = []
    ok = evaluate_claim(store, store.claim(), training, run_dir=run_dir, log=lines.append, **kw)
    return ok, store.records()[1], lines


def test_a_child_whose_parent_weights_are_deleted_trains_from_scratch_and_says_why(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    store, parent, trainer = _parent_and_child(run_dir, monkeypatch)
    (run_dir / "artifacts" / parent.weights_artifact).unlink()
    ok, child, lines = _evaluate_child(store, run_dir)
    assert ok and child.state == TrialState.COMPLETE
    reason = (
        f"the weights of trial #0 ({parent.weights_artifact}) are not in the artifact store (deleted, or this "
        "worker sees another store than the search's: give it --artifacts URL)"
    )
    assert child.inherited == {"from_trial": 0, "fallback": "scratch", "reason": reason}
    # It trained from seeded weights, with the recipe saying so; its own weights are kept for its children.
    assert trainer.calls[-1] == (A_DEPTH.inline(), False, "scratch")
    assert child.weights_artifact and (run_dir / "artifacts" / child.weights_artifact).is_file()
    assert lines == [
        f"warning: trial #1 {A_DEPTH.inline()} trains from scratch: {reason}",
        f"trial #1 {A_DEPTH.inline()}: mIoU {100 * child.miou:.2f} at 1.80 ms",
    ]


def test_a_damaged_weights_file_is_a_fallback_too(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    store, parent, trainer = _parent_and_child(run_dir, monkeypatch)
    path = run_dir / "artifacts" / parent.weights_artifact
    path.write_bytes(path.read_bytes()[:100])  # cut short, as a full disk or a dead copy leaves it
    ok, child, _ = _evaluate_child(store, run_dir)
    assert ok and child.inherited["fallback"] == "scratch"
    assert child.inherited["reason"] == (
        f"the weights of trial #0 ({parent.weights_artifact}) are damaged: not a weights file torch can load "
        "(RuntimeError)"
    )
    assert trainer.calls[-1] == (A_DEPTH.inline(), False, "scratch")
    # Weights that load but are not the parent's (another network's file) are no better.
    other = run_dir / "artifacts" / child.weights_artifact
    path.write_bytes(other.read_bytes())
    again = {"step": 1, "parent": 0, "inherit_from": 0, "latency": fake_latency(A_DEPTH, 1.8)}
    store.add(TrialRecord(A_DEPTH, strategy="greedy", **again), distributions(Constraints()))
    ok, _, _ = _evaluate_child(store, run_dir)
    again = store.records()[2]
    assert ok and again.inherited["fallback"] == "scratch"
    assert again.inherited["reason"].endswith(
        f"are damaged: ValueError: it holds the weights of {A_DEPTH.inline()}, not of {TINY.inline()}"
    )


def test_strict_inheritance_fails_the_candidate_with_one_line(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    strict = dataclasses.replace(INHERIT, inherit_missing="fail")
    store, parent, trainer = _parent_and_child(run_dir, monkeypatch, strict)
    (run_dir / "artifacts" / parent.weights_artifact).unlink()
    ok, child, lines = _evaluate_child(store, run_dir, strict)
    reason = (
        f"the weights of trial #0 ({parent.weights_artifact}) are not in the artifact store (deleted, or this "
        "worker sees another store than the search's: give it --artifacts URL) (training.inherit_missing: fail)"
    )
    assert not ok and child.state == TrialState.FAIL and child.fail_reason == reason
    assert lines == [f"trial #1 {A_DEPTH.inline()}: FAILED ({reason})"]
    assert len(trainer.calls) == 1  # not trained


def test_a_child_that_is_no_growth_of_its_parent_still_fails(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    trainer = Trainer()
    monkeypatch.setattr(worker_mod, "train_and_evaluate", trainer)
    narrow = dataclasses.replace(A_DEPTH, width=(4, 4, 16, 32, 32))
    store = make_run(
        run_dir,
        [
            {"arch": TINY, "waiting": True, "attrs": {"latency": fake_latency(TINY, 1.0)}},
            {"arch": narrow, "waiting": True, "attrs": {"step": 1, "parent": 0, "inherit_from": 0}},
        ],
    )
    evaluate_claim(store, store.claim(), INHERIT, run_dir=run_dir)
    ok, child, _ = _evaluate_child(store, run_dir)
    assert (
        not ok
        and child.fail_reason == f"{narrow.inline()} is not a growth of {TINY.inline()}: width[1] shrinks from 8 to 4"
    )


def test_the_option_is_validated_and_recorded_only_when_strict():
    def space(**training: Any):
        return space_from_dict(
            {
                "name": "x",
                "start": "lpsnet_tiny",
                "input_size": "64x128",
                "dataset": "synthetic",
                "training": {"iters": 4, **training},
            },
            source="s.yaml",
        )

    # Runs made before the option existed hash the same: the default is not recorded.
    assert space(init="inherit").space_hash() == space(init="inherit", inherit_missing="scratch").space_hash()
    assert "inherit_missing" not in space(inherit_missing="fail").to_dict()["training"]  # no inheritance, no meaning
    strict = space(init="inherit", inherit_missing="fail")
    assert strict.to_dict()["training"]["inherit_missing"] == "fail"
    assert space_from_dict(strict.to_dict()).training.inherit_missing == "fail"  # as a worker reads it
    with pytest.raises(SpaceError) as e:
        space(init="inherit", inherit_missing="strict")
    assert str(e.value) == "s.yaml: training: inherit_missing must be one of scratch, fail, got 'strict'"


def test_artifact_urls_are_checked_in_one_line(tmp_path, monkeypatch):
    assert artifacts_url("s3://bucket/runs/a/") == "s3://bucket/runs/a"
    assert artifacts_url("s3://bucket") == "s3://bucket"
    assert artifacts_url(str(tmp_path / "x" / ".." / "share")) == str(tmp_path / "share")
    for bad, message in [
        ("s3://", "--artifacts s3://: name a bucket, as in s3://BUCKET[/PREFIX]"),
        (
            "gs://b/p",
            "--artifacts 'gs://b/p': not a store this tool can use; give s3://BUCKET[/PREFIX] or a folder path",
        ),
    ]:
        with pytest.raises(UserError) as e:
            artifacts_url(bad)
        assert str(e.value) == message
    _need("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "minio:9000")  # no scheme
    with pytest.raises(UserError) as e:
        artifact_store(None, "s3://bucket/p")
    assert str(e.value) == (
        "--artifacts s3://bucket/p: cannot set up S3 (ValueError: Invalid endpoint: minio:9000); check the AWS_* "
        "settings"
    )
    monkeypatch.setitem(sys.modules, "boto3", None)  # not installed
    with pytest.raises(UserError) as e:
        artifact_store(None, "s3://bucket/p")
    assert str(e.value) == "--artifacts s3://bucket/p needs boto3, which is not installed: pip install 'lps-scaler[s3]'"
    with pytest.raises(UserError) as e:
        artifact_store(None)
    assert str(e.value) == "inherited weights need a store: give the run folder (--run-dir RUN) or --artifacts URL"


def _inherit_space(max_steps: int = 1, **training: Any):
    return inherit_space("inherit", max_steps, **training)


@pytest.fixture
def fake_search(tmp_path, monkeypatch):
    """Stand-ins for latency and training (weights written), so that a whole search takes a second or two."""
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_mod, "measure_latency", FakeLatency())
    monkeypatch.setattr(run_mod, "measure_paired", FakePaired())
    trainer = Trainer()
    monkeypatch.setattr(worker_mod, "train_and_evaluate", trainer)
    return trainer


def _need(module: str) -> Any:
    """``module``, or a skip where it is not installed (in CI, ``CI=true``, an error: the dev extra has it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} is not installed; the dev extra (pip install -e '.[dev]') installs it")
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")


@pytest.fixture
def s3(monkeypatch):
    """An S3 store in this process (moto), with a bucket ``lps``."""
    _need("boto3")
    moto = _need("moto")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    with moto.mock_aws():
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="lps")
        yield client


def _keys(client: Any) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket="lps").get("Contents", [])}


def test_a_search_keeps_its_weights_in_a_shared_s3_store(tmp_path, fake_search, s3):
    run_dir = tmp_path / "run"
    run_search(_inherit_space(), run_dir, artifacts_url="s3://lps/runs/a/", progress=False)
    store = open_run(run_dir)
    records = store.records()
    assert store.get(ARTIFACTS_ATTR) == "s3://lps/runs/a"
    assert all(r.state == TrialState.COMPLETE for r in records) and len(records) == 4
    # Every trained trial's weights are objects under the prefix; the candidates started from the start's.
    assert _keys(s3) == {f"runs/a/{r.weights_artifact}" for r in records}
    assert not (run_dir / "artifacts").exists() or not any((run_dir / "artifacts").iterdir())
    assert all(r.inherited["from_trial"] == 0 and "fallback" not in r.inherited for r in records[1:])
    assert [c[1] for c in fake_search.calls] == [False, True, True, True]
    # A worker elsewhere uses the recorded store unless given its own way to it.
    assert run_artifacts(store, None).open_reader(records[0].weights_artifact).read(2) == b"PK"
    # A resumed run keeps its store: another one is refused before anything runs.
    with pytest.raises(UserError) as e:
        run_search(_inherit_space(max_steps=2), run_dir, artifacts_url="s3://lps/other", progress=False)
    assert (
        str(e.value)
        == f"{run_dir}: this run keeps its weights in s3://lps/runs/a, not s3://lps/other; resume without --artifacts"
    )
    summary = run_search(_inherit_space(max_steps=2), run_dir, progress=False)
    assert (
        summary.complete == summary.trials
        and all(k.startswith("runs/a/") for k in _keys(s3))
        and len(_keys(s3)) == summary.trials
    )


def test_an_unreachable_store_is_a_fallback_and_the_search_goes_on(tmp_path, fake_search, monkeypatch):
    _need("boto3")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens there
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "run"
    lines: list[str] = []
    summary = run_search(_inherit_space(), run_dir, artifacts_url="s3://lps/a", progress=False, log=lines.append)
    records = open_run(run_dir).records()
    assert summary.complete == summary.trials == 4 and all(r.weights_artifact is None for r in records)
    kept = [line for line in lines if "its weights cannot be kept" in line]
    assert len(kept) == 4 and kept[0].startswith(
        "warning: trial #0: its weights cannot be kept (EndpointConnectionError: "
    )
    for r in records[1:]:
        assert r.inherited == {
            "from_trial": 0,
            "fallback": "scratch",
            "reason": "trial #0 kept no weights to inherit (it finished before inherited training was on, "
            "or its worker could not upload them)",
        }


def test_the_search_goes_on_when_the_start_weights_are_damaged_and_says_so(tmp_path, fake_search, monkeypatch):
    damaged: list[int] = []

    def damaging(arch: Any, config: TrainConfig, **kw: Any) -> Any:
        result = fake_search(arch, config, **kw)
        if not damaged:  # the start's weights: what every other trial inherits
            damaged.append(1)
            Path(kw["save"]).write_bytes(b"not weights")
        return result

    monkeypatch.setattr(worker_mod, "train_and_evaluate", damaging)
    run_dir = tmp_path / "run"
    summary = run_search(_inherit_space(), run_dir, progress=False)
    assert summary.complete == summary.trials == 4 and summary.stop_reason
    fallbacks = [r for r in open_run(run_dir).records() if (r.inherited or {}).get("fallback") == "scratch"]
    assert [r.number for r in fallbacks] == [1, 2, 3]
    report = summarize_run(run_dir)
    reason = fallbacks[0].inherited["reason"]
    start = open_run(run_dir).records()[0]
    assert reason == (
        f"the weights of trial #0 ({start.weights_artifact}) are damaged: not a weights file torch can load "
        "(UnpicklingError)"
    )
    assert f"3 trials trained from scratch instead of inheriting (#1, #2, #3): {reason}" in format_frontier(report)
    assert report.to_dict()["scratch_fallbacks"] == {r.number: r.inherited["reason"] for r in fallbacks}
    # An exported candidate's card says how it really trained.
    first = fallbacks[0]
    card = model_card(open_run(run_dir), run_dir, 1, "test", first.arch, first, {}, {}, (1, 3, 64, 128), False, True)
    assert f"Inherited training was asked, but it trained from scratch: {reason}." in card
    assert "started from its parent's trained weights" not in card

    # Strict: the same loss fails the candidates, with the reason, and the search still ends.
    strict_dir = tmp_path / "strict"
    damaged.clear()
    summary = run_search(_inherit_space(inherit_missing="fail"), strict_dir, progress=False)
    records = open_run(strict_dir).records()
    assert summary.failed == 3 and [r.state for r in records[1:]] == [TrialState.FAIL] * 3
    assert all(r.fail_reason.endswith("(training.inherit_missing: fail)") for r in records[1:])


@pytest.mark.slow
def test_kill_9_of_an_inherited_search_keeps_every_trial_weights_and_trains_nothing_twice(tmp_path):
    space = tmp_path / "space.yaml"
    text = tiny_space("killed", 2)
    space.write_text(text.replace("seed: 0}", "seed: 0, init: inherit}"))
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "helpers")]),
        "LPS_SCALER_CACHE": str(tmp_path / "cache"),
        "FAKE_TRAIN_S": "0.4",
    }
    cmd = [sys.executable, str(REPO / "tests" / "helpers" / "fake_cli.py"), "search", "--space", str(space)]
    cmd += ["--out", str(run_dir), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    # Kill it while it trains an inherited candidate (after the start and at least one candidate finished).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not (run_dir / "study.journal").is_file():
            continue
        records = open_run(run_dir).records()
        done = sum(r.complete for r in records)
        if done >= 2 and any(r.state == TrialState.RUNNING and r.inherit_from is not None for r in records):
            break
    else:
        pytest.fail("the search never trained an inherited candidate")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    killed = next(r for r in open_run(run_dir).records() if r.state == TrialState.RUNNING)
    finished_before = {r.number for r in open_run(run_dir).records() if r.complete}

    r = subprocess.run(cmd, env={**env, "FAKE_TRAIN_S": "0"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    records = open_run(run_dir).records()
    complete = [t for t in records if t.complete]
    by_number = {t.number: t for t in records}
    # Every complete trial has its weights in the run's store; inherited ones name their parent's.
    for t in complete:
        assert t.weights_artifact and (run_dir / "artifacts" / t.weights_artifact).is_file(), t.number
        if t.inherit_from is not None:
            parent = by_number[t.inherit_from]
            assert t.inherited == {
                "from_trial": parent.number,
                "weights_artifact": parent.weights_artifact,
                "growth_noise": t.inherited["growth_noise"],
            }
    # The killed trial was trained again (as a copy), from its parent; nothing that finished was.
    copy = next(t for t in complete if t.retry_of == killed.number)
    assert copy.inherit_from == killed.inherit_from and copy.arch == killed.arch
    assert all(by_number[n].complete for n in finished_before)
    keys = [(t.arch_hash, t.control_of, t.inherit_from) for t in complete]
    assert len(keys) == len(set(keys))
    assert any(t.is_control for t in complete) and open_run(run_dir).get("status") == "finished"


def test_a_worker_given_a_store_it_cannot_read_trains_from_scratch(tmp_path, monkeypatch, s3):
    run_dir = tmp_path / "run"
    store, parent, _ = _parent_and_child(run_dir, monkeypatch, artifacts_url="s3://lps/w")
    assert _keys(s3) == {f"w/{parent.weights_artifact}"}
    # This worker's own --artifacts names a bucket that does not exist (a typo, another account).
    ok, child, lines = _evaluate_child(store, run_dir, artifacts_url="s3://missing/w")
    assert ok and child.inherited["fallback"] == "scratch"
    assert child.inherited["reason"] == (
        f"the weights of trial #0 ({parent.weights_artifact}) are not in the artifact store (deleted, or this "
        "worker sees another store than the search's: give it --artifacts URL)"
    )
    assert lines[0].startswith("warning: trial #1 ") and lines[1].startswith("warning: trial #1: its weights cannot")


def test_a_store_that_fails_to_read_is_a_fallback_with_its_error(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    store, parent, _ = _parent_and_child(run_dir, monkeypatch)
    path = run_dir / "artifacts" / parent.weights_artifact
    path.unlink()
    path.mkdir()  # stands for any error of the store itself (a folder where its file was)
    ok, child, _ = _evaluate_child(store, run_dir)
    assert ok and child.inherited["reason"] == (
        f"the weights of trial #0 ({parent.weights_artifact}) cannot be fetched from the artifact store: "
        f"IsADirectoryError: [Errno 21] Is a directory: '{path}'"
    )


def test_the_command_line_takes_the_store_and_refuses_a_bad_one_before_touching_the_run(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(tiny_space("cli", 1).replace("seed: 0}", "seed: 0, init: inherit}"))
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["search", "--space", str(space), "--out", str(run_dir), "--artifacts", "gs://b/p"])
    assert r.exit_code != 0 and r.output == (
        "error: --artifacts 'gs://b/p': not a store this tool can use; give s3://BUCKET[/PREFIX] or a folder path\n"
    )
    assert not run_dir.exists()
    worker = CliRunner().invoke(main, ["worker", "--help"])
    assert "--artifacts URL" in worker.output
