"""The typed trial record and the greedy step records: stored form, old runs, and reference trials."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from fake_search import FakeLatency, fake_ms, fake_train
from optuna.trial import TrialState
from paired_standin import FakePaired

import scaler.search.run as run_mod
import scaler.search.worker as worker_mod
from models import get_arch
from scaler.report import trials_frame
from scaler.report.path import greedy_path
from scaler.report.plot_data import frontier_plot_data
from scaler.report.summary import summarize_run
from scaler.search.record import Attr, TrialKind, TrialRecord
from scaler.search.run import run_search
from scaler.search.space import SpaceError, load_space
from scaler.search.store import open_run
from scaler.search.strategies.greedy import GreedyStrategy, StepDecision, StepPlan

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "results" / "reference" / "lpsnet_demo_128x256"
TINY = get_arch("lpsnet_tiny")


def test_a_record_round_trips_through_its_stored_form():
    rec = TrialRecord(
        TINY,
        strategy="greedy",
        step=2,
        parent=7,
        operators=("width_1-5",),
        steplen=3,
        target_ms=1.25,
        latency={"median_ms": 1.5, "fingerprint": {"device_name": "X"}, "fingerprint_hash": "ab"},
        weights="weights/trial_00009.pt",
        extra={"note": "kept"},
    )
    attrs = rec.to_user_attrs()
    assert attrs[Attr.ARCH_HASH] == TINY.arch_hash() and attrs["note"] == "kept"
    assert Attr.OVER_BUDGET not in attrs and Attr.REFERENCE not in attrs  # unset keys are not written
    back = TrialRecord.from_user_attrs(attrs)
    assert back == rec
    assert back.latency_ms == 1.5 and back.fingerprint == {"device_name": "X"} and back.fingerprint_hash == "ab"
    assert back.kind == TrialKind.CANDIDATE


def test_core_keys_are_written_even_when_empty():
    attrs = TrialRecord(TINY, strategy="random", step=None).to_user_attrs()
    assert {k: attrs[k] for k in Attr.CORE} == {
        "step": None,
        "parent": None,
        "operators": [],
        "steplen": 0,
        "strategy": "random",
    }


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({}, TrialKind.CANDIDATE),
        ({"over_budget": True}, TrialKind.OVER_BUDGET),
        ({"retry_of": 3}, TrialKind.RETRY),
        ({"reference": "lpsnet_s", "retry_of": 3}, TrialKind.REFERENCE),
    ],
)
def test_kind(fields, kind):
    assert TrialRecord(TINY, **fields).kind == kind


def test_a_requeued_record_forgets_its_worker():
    rec = TrialRecord(TINY, step=1, owner={"host": "h", "pid": 1}, heartbeat=5.0, fail_reason="died", number=4)
    again = rec.requeued(4)
    assert again.retry_of == 4 and again.owner is None and again.heartbeat is None and again.fail_reason is None
    assert again.number is None and again.step == 1 and again.kind == TrialKind.RETRY


def test_a_requeued_inherited_candidate_starts_again_from_its_parent_and_keeps_no_weights_of_its_own():
    # A worker killed after uploading the trial's weights but before finishing it: the copy trains
    # again from the parent's weights; the dead trial's artifact is not the copy's.
    rec = TrialRecord(
        TINY,
        step=2,
        inherit_from=7,
        weights_artifact="dead-trials-file",
        inherited={"from_trial": 7, "weights_artifact": "parent-file", "growth_noise": 0.01},
        owner={"host": "h", "pid": 1},
        number=9,
    )
    again = rec.requeued(9)
    assert again.inherit_from == 7 and again.weights_artifact is None and again.inherited is None
    assert TrialRecord.from_user_attrs(again.to_user_attrs()) == again
    replica = dataclasses.replace(rec, owner=None).replicated(seed=1)
    assert replica.inherit_from == 7 and replica.weights_artifact is None and replica.seed_of == 9


def test_a_committed_run_reads_back_as_before():
    store = open_run(DEMO)
    records = store.records()
    assert len(records) == 26 and all(r.complete for r in records)
    assert records[0].step == 0 and records[0].parent is None and records[0].strategy == "greedy"
    assert records[8].operators == ("res_path1",) and records[8].steplen == 4 and records[8].parent == 0
    assert records[8].latency_ms == pytest.approx(1.1236179998377338, abs=0)
    assert records[8].miou == pytest.approx(0.2851015015430451, abs=0)
    assert records[8].fingerprint["device_name"] == "AMD EPYC"
    # Nothing stored is lost: every trial's attributes are written back exactly as read.
    for rec, t in zip(records, store.trials(), strict=True):
        assert rec.to_user_attrs() == t.user_attrs

    steps = GreedyStrategy.steps(store.study.user_attrs)
    assert [(s.step, s.parent, s.winner) for s in steps] == [(1, 0, 8), (2, 8, 14), (3, 14, 24)]
    assert steps[0].candidates == tuple(range(1, 10)) and steps[0].winner_slope == pytest.approx(0.32957898544207564)
    for s in range(1, 4):  # the typed records keep the JSON they were read from
        assert StepDecision.from_dict(store.get(f"step_{s}")).to_dict() == store.get(f"step_{s}")
        assert StepPlan.from_dict(store.get(f"plan_{s}")).to_dict() == store.get(f"plan_{s}")
    assert [p.step for p in GreedyStrategy.plans(store.study.user_attrs)] == [1, 2, 3]

    df = trials_frame(store)
    path = greedy_path(store, df)
    assert list(path["trial"]) == [0, 8, 14, 24]
    committed = pd.read_csv(DEMO / "path.csv")
    assert list(committed["trial"]) == [0, 8, 14, 24]
    assert list(path["latency_ms"]) == list(committed["latency_ms"])
    assert df.loc[24, "latency_ms"] == pd.read_csv(DEMO / "trials.csv").loc[24, "latency_ms"]


def test_existing_spaces_keep_their_hash():
    # References are left out of the stored space when there are none: old runs resume unchanged.
    space = load_space(REPO / "search_spaces" / "lpsnet_demo.yaml")
    assert space.references == () and "references" not in space.to_dict()
    # The demo space now times latency at a size of its own, its one difference from the committed
    # run's: test_space.py pins that without it, it hashes as results/reference/lpsnet_demo_128x256/run.json records.


SPACE = """\
name: refs
start: lpsnet_tiny
input_size: 64x128
dataset: synthetic:size=64x128,train=8,val=4
constraints: {{width_divisor: 4, max_depth: 4, max_width: 64}}
latency: {{device: cpu, threads: 1}}
training: {{iters: 2, batch: 2, crop: 64x96, seed: 0}}
stopping: {{max_steps: 2}}
{references}
"""


def _space(tmp_path: Path, references: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(references=references))
    return path


def test_a_bad_reference_is_one_clear_error(tmp_path):
    with pytest.raises(SpaceError, match=r"space\.yaml: references\[1\]: unknown architecture 'lpsnet_xl'"):
        load_space(_space(tmp_path, "references: [lpsnet_s, lpsnet_xl]"))
    with pytest.raises(SpaceError, match=r"references\[1\]: 'lpsnet_s' is listed twice"):
        load_space(_space(tmp_path, "references: [lpsnet_s, lpsnet_s]"))


def test_references_are_measured_trained_and_never_decided_on(tmp_path, monkeypatch):
    latency = FakeLatency()
    monkeypatch.setattr(run_mod, "measure_latency", latency)
    monkeypatch.setattr(run_mod, "measure_paired", FakePaired())
    monkeypatch.setattr(worker_mod, "train_and_evaluate", fake_train)
    plain = run_search(load_space(_space(tmp_path, "")), tmp_path / "plain", progress=False)
    space = load_space(_space(tmp_path, "references: [lpsnet_s, mobilenetv2_050]"))
    assert space.to_dict()["references"] == ["lpsnet_s", "mobilenetv2_050"]
    summary = run_search(space, tmp_path / "run", progress=False)

    store = open_run(tmp_path / "run")
    records = store.records()
    refs = [r for r in records if r.kind == TrialKind.REFERENCE]
    assert [r.reference for r in refs] == ["lpsnet_s", "mobilenetv2_050"]
    assert all(r.state == TrialState.COMPLETE and r.step is None for r in refs)
    s_arch = dataclasses.replace(get_arch("lpsnet_s"), num_classes=space.start.num_classes)
    assert refs[0].arch.depth == s_arch.depth and refs[0].latency_ms == pytest.approx(fake_ms(s_arch))
    assert refs[1].arch.inline().startswith("mobilenetv2:") and refs[1].values == (7.5, 0.42)

    # The search itself is the one a run without references makes.
    search = [r for r in records if not r.is_reference]
    base = open_run(tmp_path / "plain")
    assert [r.arch_hash for r in search] == [r.arch_hash for r in base.records()]
    assert summary.stop_reason == plain.stop_reason
    assert list(greedy_path(store, trials_frame(store))["arch"]) == list(greedy_path(base, trials_frame(base))["arch"])

    # The report shows them as named models, never on the frontier.
    report = summarize_run(tmp_path / "run", store, write=False)
    assert list(report.references["reference"]) == ["mobilenetv2_050", "lpsnet_s"]  # by latency
    assert report.frontier["reference"].isna().all()
    named = frontier_plot_data(store, trials_frame(store)).named
    assert [(n.name, n.reference) for n in named] == [("lpsnet_s", True), ("mobilenetv2_050", True)]

    # Resuming queues nothing again.
    calls = latency.calls
    run_search(space, tmp_path / "run", progress=False)
    assert len(open_run(tmp_path / "run").records()) == len(records) and latency.calls == calls
