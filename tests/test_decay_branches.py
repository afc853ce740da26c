"""WSD decay branches (PAPER.md §2): a branch forked from the stable run measures the
same loss as a separate run trained to that budget, and the main run continues as if
no branch had been taken. Tiny MoE on CPU, composed from the real Hydra config."""
from __future__ import annotations

import pytest

from lrscale.optim import ScheduleConfig
from lrscale.training.branches import plan_forks
from lrscale.training.results_table import summary_rows

from conftest import compose_cfg

T, B = 32, 4
TOKENS_PER_STEP = T * B


@pytest.fixture(autouse=True)
def _no_env_cache(monkeypatch):
    monkeypatch.delenv("LRSCALE_CACHE", raising=False)  # keep the token cache in the test's tmp dir


def run_tiny(tmp_path, data_cache, name: str, steps: int, budgets: list[int]) -> dict:
    import train

    cfg = compose_cfg([
        "model.d_model=32", "model.n_heads=2", "model.n_layers=2", f"model.seq_len={T}",
        "model.moe.num_experts=4", "model.moe.top_k=2", "optim.lr=1e-2",
        f"train.batch_size={B}", f"train.steps={steps}", "train.eval_every=1000", "train.eval_batches=2",
        "train.ckpt_every=0", "run.keep_checkpoint=false", "schedule.warmup_steps=2",
        "schedule.decay_fraction=0.25", f"schedule.decay_branches=[{','.join(map(str, budgets))}]",
        "data.max_bytes=400000", "data.val_fraction=0.3", "data.tokenizer.vocab_size=384", f"data.cache_dir={data_cache}",
        f"run.root={tmp_path / 'runs'}", f"run.name={name}", "logging.progress=false",
        "logging.print_param_table=false", "hardware.num_threads=1",
    ])
    return train.run(cfg)


def test_branch_equals_a_separate_run_to_its_budget(tmp_path, data_cache):
    budgets = [8 * TOKENS_PER_STEP, 12 * TOKENS_PER_STEP]
    main = run_tiny(tmp_path, data_cache, "main", 16, budgets)
    assert [b["steps"] for b in main["branches"]] == [8, 12]
    assert [b["status"] for b in main["branches"]] == ["ok", "ok"]
    for branch in main["branches"]:
        alone = run_tiny(tmp_path, data_cache, f"alone{branch['steps']}", branch["steps"], [])
        assert branch["val_loss"] == pytest.approx(alone["final_val_loss"], rel=1e-6, abs=0)

    # Back on the stable run: the same final loss as a run that never branched.
    plain = run_tiny(tmp_path, data_cache, "plain", 16, [])
    assert main["final_val_loss"] == pytest.approx(plain["final_val_loss"], rel=1e-6, abs=0)
    assert main["run_flops"] > plain["run_flops"] == main["flops"]

    rows = summary_rows(main)
    assert [r["tokens"] for r in rows] == [*budgets, 16 * TOKENS_PER_STEP]
    assert [r["branch"] for r in rows] == [0, 1, 2]
    assert {r["status"] for r in rows} == {"ok"}


def test_branch_plan_forks_where_a_separate_run_decays(capsys):
    cfg = ScheduleConfig(warmup_steps=10, decay_fraction=0.2, decay_branches=[100 * 64, 50 * 64, 200 * 64])
    # 50 steps decay for 10 (fork at 40), 100 steps for 20 (fork at 80); 200 steps is the run itself.
    assert plan_forks(cfg, 200, 64) == [(40, 50), (80, 100)]
    # A budget past the run's end is reported, not silently measured as something else.
    assert plan_forks(cfg, 150, 64) == [(40, 50), (80, 100)]
    assert "past the run's end" in capsys.readouterr().err


def test_branch_plan_rejects_a_fork_inside_the_warmup():
    cfg = ScheduleConfig(warmup_steps=10, decay_fraction=0.2, decay_branches=[11 * 64])
    with pytest.raises(ValueError, match="inside the warmup"):
        plan_forks(cfg, 100, 64)


def test_diverged_run_reports_every_budget_it_missed():
    summary = {"status": "diverged", "run_dir": "runs/r", "config_hash": "h", "model": "m", "parametrization": "sp",
               "n_total": 1, "n_active": 1, "n_active_nonembed": 1, "d_model": 8, "n_layers": 1, "num_experts": 0,
               "top_k": 0, "lr": 1.0, "seed": 0, "batch_tokens": 10, "run_flops": 0.0, "wall_time_s": 1.0,
               "data_fingerprint": "f", "flops_per_token": 6.0, "steps": 30, "tokens": 300,
               "final_val_loss": None, "planned_steps": [20, 40, 80],
               "branches": [{"steps": 20, "tokens": 200, "val_loss": 3.0, "status": "ok"}]}
    rows = summary_rows(summary)
    assert [(r["tokens"], r["status"]) for r in rows] == [(200, "ok"), (400, "diverged"), (800, "diverged")]
    assert [r["branch"] for r in rows] == [0, 1, 2]


def test_budgets_rounding_to_the_same_step_are_measured_once():
    from lrscale.optim import ScheduleConfig
    from lrscale.training.branches import plan_forks
    cfg = ScheduleConfig(warmup_steps=2, decay_fraction=0.2, decay_branches=[10_000, 10_100, 20_000])
    assert plan_forks(cfg, total_steps=100, tokens_per_step=1000) == [(8, 10), (16, 20)]
