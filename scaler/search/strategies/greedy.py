"""Greedy progressive expansion, as the method defines it (see :mod:`scaler.search.expand`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models import LPSNetArch
from scaler.search.expand import Scored, propose_step, select_next
from scaler.search.strategies.base import Decision, Proposal, SearchContext, Strategy, TrialRecord, latest_by_hash

__all__ = ["GreedyStrategy"]


class GreedyStrategy(Strategy):
    """Progressive expansion as the method defines it (see :mod:`scaler.search.expand`).

    Records per step ``s`` in the run: ``plan_<s>`` (the candidates with their operators, steplen
    and latency, written when proposed) and ``step_<s>`` (every candidate's slope, the winner, and
    why), so the decision at each step can be read back and a resumed search reuses both.
    """

    name = "greedy"

    def propose(self, history: Sequence[TrialRecord], ctx: SearchContext) -> Decision:
        sp = self.space
        if any(t.pending for t in history):
            return Decision.wait()
        latest = latest_by_hash(history)
        start_hash = sp.start.arch_hash()
        if start_hash not in latest:
            return Decision(
                "propose",
                (
                    Proposal(
                        sp.start, {"step": 0, "parent": None, "operators": [], "steplen": 0, "strategy": self.name}
                    ),
                ),
            )
        parent = latest[start_hash]
        if not parent.complete:
            return Decision.done(f"the start network failed: {parent.attrs.get('fail_reason', 'unknown reason')}")
        budget = sp.stopping.latency_budget_ms
        step = 1
        while True:
            if step > sp.stopping.max_steps:
                return Decision.done(f"step limit reached ({sp.stopping.max_steps} steps)")
            if sp.stopping.max_trials is not None and sum(t.step is not None for t in latest.values()) >= (
                sp.stopping.max_trials
            ):
                return Decision.done(f"trial limit reached ({sp.stopping.max_trials})")
            if budget is not None and parent.latency_ms is not None and parent.latency_ms >= budget:
                return Decision.done(f"latency budget reached ({parent.latency_ms:.2f} >= {budget:g} ms)")
            plan = ctx.get(f"plan_{step}")
            if plan is None:
                plan = self._plan(step, parent, ctx)
                ctx.put(f"plan_{step}", plan)
            if not plan["candidates"]:
                return Decision.done(plan["reason"])
            missing = [c for c in plan["candidates"] if c["arch_hash"] not in latest]
            if missing:
                return Decision(
                    "propose",
                    tuple(
                        Proposal(
                            LPSNetArch.from_dict(c["arch"]),
                            {
                                "step": step,
                                "parent": parent.number,
                                "operators": c["operators"],
                                "steplen": c["steplen"],
                                "target_ms": plan["target_ms"],
                                "strategy": self.name,
                            },
                        )
                        for c in missing
                    ),
                )
            decision = ctx.get(f"step_{step}")
            if decision is None:
                decision = self._decide(step, parent, plan, latest, ctx)
                ctx.put(f"step_{step}", decision)
            if decision["winner"] is None:
                return Decision.done(f"step {step}: {decision['reason']}")
            parent = next(t for t in latest.values() if t.number == decision["winner"])
            step += 1

    def _plan(self, step: int, parent: TrialRecord, ctx: SearchContext) -> dict[str, Any]:
        sp = self.space
        candidates = propose_step(
            parent.arch, sp.operators, ctx.latency_ms, sp.constraints, max_steplen=sp.greedy.max_steplen
        )
        budget = sp.stopping.latency_budget_ms
        kept = [c for c in candidates if budget is None or c.latency_ms <= budget]
        over = len(candidates) - len(kept)
        reason = ""
        if not candidates:
            reason = "no operator can grow the network within the constraints"
        elif not kept:
            reason = f"every candidate is over the latency budget of {budget:g} ms"
        target = candidates[0].target_ms if candidates else None
        ctx.log(
            f"step {step}: parent #{parent.number} {parent.arch.inline()} ({parent.latency_ms:.2f} ms, "
            f"mIoU {100 * (parent.miou or 0):.2f}); target {target if target is None else round(target, 3)} ms; "
            f"{len(kept)} candidates" + (f" ({over} over budget, dropped)" if over else "")
        )
        return {
            "step": step,
            "parent": parent.number,
            "target_ms": target,
            "reason": reason,
            "dropped_over_budget": over,
            "candidates": [
                {
                    "arch": c.arch.to_dict(),
                    "arch_hash": c.arch.arch_hash(),
                    "operators": list(c.operators),
                    "steplen": c.steplen,
                    "latency_ms": c.latency_ms,
                }
                for c in kept
            ],
        }

    def _decide(
        self, step: int, parent: TrialRecord, plan: dict[str, Any], latest: dict[str, TrialRecord], ctx: SearchContext
    ) -> dict[str, Any]:
        trials = [latest[c["arch_hash"]] for c in plan["candidates"]]
        scored = [Scored(t.number, t.latency_ms if t.latency_ms is not None else float("inf"), t.miou) for t in trials]
        sel = select_next(
            Scored(parent.number, parent.latency_ms or 0.0, parent.miou),
            scored,
            min_latency_gain_ms=self.space.greedy.noise_floor_ms,
        )
        rows = []
        for t in trials:
            slope = sel.slopes.get(t.number)
            rows.append(
                f"#{t.number} {'+'.join(t.attrs.get('operators', []))} x{t.attrs.get('steplen')}: "
                f"{t.latency_ms:.2f} ms, mIoU {'failed' if t.miou is None else f'{100 * t.miou:.2f}'}, "
                f"slope {'-' if slope is None else f'{100 * slope:.4g} points/ms'}"
            )
        ctx.log(f"step {step} decided: " + "; ".join(rows))
        ctx.log(
            f"step {step} winner: "
            + (f"#{sel.winner} ({sel.reason})" if sel.winner is not None else f"none ({sel.reason})")
        )
        return {
            "step": step,
            "parent": parent.number,
            "candidates": [t.number for t in trials],
            "slopes": {str(k): v for k, v in sel.slopes.items()},
            "winner": sel.winner,
            "reason": sel.reason,
        }
