"""WSD decay branches (PAPER.md §2 "decay branches"): one stable run per (N, η) measures the
loss at several token budgets D. At each budget's fork step the run snapshots its state, trains
the WSD decay a separate run of that length would train, evaluates, and returns to the snapshot.

The loader is a pure function of the step, so a branch sees exactly the batches a separate run
to its budget would see (tests/test_decay_branches.py: branch == separate run). Everything about
branches lives here: the plan, the fork, the result rows in metrics.jsonl, the budgets a run was
meant to measure. A budget at the run's own end is the run itself, not a branch.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Callable

from lrscale.optim import ScheduleConfig, wsd, wsd_decay_steps

ROW_KEY = "branch_tokens"  # metrics.jsonl rows of a finished branch carry this key


def is_branch_row(row: dict) -> bool:
    return ROW_KEY in row


def plan_forks(cfg: ScheduleConfig, total_steps: int, tokens_per_step: int,
               warn: Callable[[str], None] | None = None) -> list[tuple[int, int]]:
    """(fork step, end step) of each decay branch, by budget. A branch to `end` forks where a
    separate WSD run of `end` steps would start its decay. Raises for a budget under one step or
    one that would fork inside the warmup; warns for budgets past the run or measured twice."""
    warn = warn or (lambda msg: print(f"[train] {msg}", file=sys.stderr))
    plan, ends = [], set()
    for budget in sorted(set(cfg.decay_branches)):
        end = round(budget / tokens_per_step)
        if end < 1:
            raise ValueError(f"schedule.decay_branches: budget {budget} tokens is less than one step "
                             f"({tokens_per_step} tokens)")
        if end in ends:
            warn(f"schedule.decay_branches: budget {budget} tokens rounds to step {end} like an earlier budget; "
                 "measured once")
            continue
        ends.add(end)
        if end > total_steps:
            warn(f"schedule.decay_branches: budget {budget} tokens ({end} steps) is past the run's end "
                 f"({total_steps} steps) and is not measured; raise train.steps to include it")
            continue
        if end == total_steps:
            continue
        start = end - wsd_decay_steps(cfg, end)
        if start < cfg.warmup_steps:
            raise ValueError(f"schedule.decay_branches: budget {budget} tokens ({end} steps) would fork at "
                             f"step {start}, inside the warmup ({cfg.warmup_steps} steps); use larger budgets")
        plan.append((start, end))
    return plan


@dataclass
class DecayBranches:
    """The branches of one run, and running the ones due at a step."""
    schedule: ScheduleConfig
    total_steps: int
    tokens_per_step: int
    forks: list[tuple[int, int]]

    @classmethod
    def plan(cls, schedule: ScheduleConfig, total_steps: int, tokens_per_step: int) -> DecayBranches:
        return cls(schedule, total_steps, tokens_per_step, plan_forks(schedule, total_steps, tokens_per_step))

    @property
    def planned_steps(self) -> list[int]:
        """Every budget the run measures, in steps: the branches' ends, then the run's own."""
        return [end for _, end in self.forks] + [self.total_steps]

    def run_due(self, step: int, ctx, loader, val_batches: list, state, divergence_factor: float,
                stop_requested: Callable[[], bool], log: Callable[[dict], None]) -> bool:
        """Run every branch that forks at `step` and is not done yet, recording each in `state`
        and the log. Returns False when a stop was requested mid-branch (the branch is abandoned
        and redone from its fork on resume), True otherwise."""
        done = {b["steps"] for b in state.branches}
        for start, end in self.forks:
            if start != step or end in done:
                continue
            res = fork_and_decay(ctx, loader, val_batches, start, end, wsd(self.schedule, end), divergence_factor,
                                 state, stop_requested)
            if res["status"] == "interrupted":
                return False
            res["tokens"] = end * self.tokens_per_step
            state.branches.append(res)
            state.branch_tokens += (end - start) * self.tokens_per_step
            log({"step": step, ROW_KEY: res["tokens"], "branch_val_loss": res["val_loss"]})
        return True


def fork_and_decay(ctx, loader, val_batches: list, start: int, end: int, factor, divergence_factor: float,
                   state, stop_requested: Callable[[], bool] = lambda: False) -> dict:
    """Fork a WSD decay from the stable state at `start`, train to `end`, evaluate, return to
    the stable state. `stop_requested` is asked before each step (collective under torchrun);
    when it says stop, the branch is abandoned with status `interrupted` and the state restored."""
    from .loop import divergence_flag, evaluate, train_step

    snap = _snapshot(ctx.core, ctx.optimizer)
    main_factor = ctx.schedule.factor
    ctx.schedule.factor = factor
    bad = None
    try:
        for step in range(start, end):
            if stop_requested():
                return {"steps": end, "decay_steps": end - start, "val_loss": None, "status": "interrupted"}
            x, y = loader.batch(step)
            flag = divergence_flag(train_step(ctx, x, y, step)["loss"], state.initial_loss, divergence_factor)
            bad = flag if bad is None else bad | flag
        status = "diverged" if bad is not None and bool(bad) else "ok"  # read once, at the branch's end
        val = evaluate(ctx.model, val_batches, ctx.device, ctx.autocast) if status == "ok" else None
    finally:
        ctx.schedule.factor = main_factor
        ctx.core.load_state_dict(snap["model"])
        ctx.optimizer.load_state_dict(snap["optimizer"])
    return {"steps": end, "decay_steps": end - start, "val_loss": val, "status": status}


def _snapshot(core, optimizer) -> dict:
    """CPU copy of model and optimizer state, to return to after a branch."""
    return {"model": {k: v.detach().to("cpu", copy=True) for k, v in core.state_dict().items()},
            "optimizer": _to_cpu(copy.deepcopy(optimizer.state_dict()))}


def _to_cpu(obj):
    if hasattr(obj, "to") and hasattr(obj, "device"):  # a tensor
        return obj.to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
