"""Property tests for optim/: schedule factors at hand-computed steps, per-group LR
multipliers surviving a thousand scheduler steps, weight-decay modes measured from
one real AdamW step, the token-horizon rule, and validation messages.
"""
from __future__ import annotations

import math

import pytest
import torch

from lrscale.models import ModelConfig, MoEConfig, Transformer
from lrscale.optim import (
    GroupLR, OptimConfig, ScheduleConfig, build_optimizer, build_schedule, horizon_lr, validate_optim,
)
from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights, param_table

M = 4  # muP width multiplier used throughout: hidden groups get lr / 4 and eps / 4


def mup_model(moe: bool = True):
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=2, vocab_size=64, seq_len=16,
                      moe=MoEConfig(num_experts=4, top_k=2, d_expert=16) if moe else MoEConfig())
    param = build_parametrization(ParametrizationConfig(name="mup", base_d_model=64 // M), cfg)
    model = Transformer(cfg, param)
    init_weights(model, param, seed=0)
    return model, param_table(model, param)


# ---- schedule factors ---------------------------------------------------------------------------

# total 100 steps, warmup 10, decay over the last 20 (steps 80..99), final factor 0.1.
# Warmup: (step + 1) / 10. Decay progress p = (step - 80 + 1) / 20; factor 0.1 + 0.9 * shape(p).
WSD_EXPECTED = {
    # step: (linear, cosine, 1-sqrt)
    0: (0.1, 0.1, 0.1),
    4: (0.5, 0.5, 0.5),
    9: (1.0, 1.0, 1.0),
    50: (1.0, 1.0, 1.0),
    79: (1.0, 1.0, 1.0),
    84: (0.775, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55),   # p = 1/4
    89: (0.55, 0.55, 0.1 + 0.9 * (1 - math.sqrt(0.5))),            # p = 1/2
    99: (0.1, 0.1, 0.1),                                            # p = 1: the final factor
}


@pytest.mark.parametrize("i, shape", enumerate(["linear", "cosine", "1-sqrt"]))
def test_wsd_factor_at_chosen_steps(i, shape):
    f = build_schedule(ScheduleConfig(name="wsd", warmup_steps=10, decay_fraction=0.2,
                                      decay_shape=shape, final_lr_frac=0.1), total_steps=100)
    for step, expected in WSD_EXPECTED.items():
        assert f(step) == pytest.approx(expected[i], abs=1e-12), (shape, step)
    values = [f(s) for s in range(100)]
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))          # warmup rises
    assert all(a >= b for a, b in zip(values[80:], values[81:]))          # decay falls
    assert min(values) == pytest.approx(0.1) and max(values) == 1.0


def test_wsd_without_floor_ends_at_zero():
    f = build_schedule(ScheduleConfig(name="wsd", warmup_steps=0, decay_fraction=0.5), total_steps=10)
    assert [f(s) for s in range(10)] == pytest.approx([1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0.0])


def test_cosine_and_constant_factors():
    cos = build_schedule(ScheduleConfig(name="cosine", warmup_steps=10, final_lr_frac=0.1), total_steps=100)
    # After warmup p = (step - 10 + 1) / 90; factor 0.1 + 0.45 (1 + cos(pi p)).
    assert cos(0) == pytest.approx(0.1)
    assert cos(9) == pytest.approx(1.0)
    assert cos(54) == pytest.approx(0.55)        # p = 1/2
    assert cos(39) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 3)))  # p = 1/3
    assert cos(99) == pytest.approx(0.1)
    const = build_schedule(ScheduleConfig(name="constant", warmup_steps=4), total_steps=100)
    assert [const(s) for s in (0, 1, 3, 4, 50, 99)] == pytest.approx([0.25, 0.5, 1, 1, 1, 1])
    flat = build_schedule(ScheduleConfig(name="constant", warmup_steps=0), total_steps=10)
    assert [flat(s) for s in range(10)] == [1.0] * 10


# ---- per-group multipliers survive the schedule ---------------------------------------------------

def test_per_group_multipliers_survive_1000_scheduler_steps():
    model, table = mup_model()
    opt = build_optimizer(model, table, OptimConfig(lr=3e-3, weight_decay=0.1), tokens_per_step=32, total_tokens=1e5)
    initial = [g["lr"] for g in opt.param_groups]
    assert len(set(initial)) >= 2
    assert sorted(set(initial)) == pytest.approx([3e-3 / M, 3e-3])
    for g in opt.param_groups:  # the hidden groups are the ones with lr / m
        hidden = set(g["roles"]) <= {"attn_qkv", "attn_out", "mlp_in", "mlp_out", "expert_in", "expert_out"}
        assert g["lr"] == pytest.approx(3e-3 / M if hidden else 3e-3)
    total = 1000
    factor = build_schedule(ScheduleConfig(name="wsd", warmup_steps=100, decay_fraction=0.2,
                                           decay_shape="1-sqrt", final_lr_frac=0.05), total)
    sched = GroupLR(opt, factor)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for step in range(total):
        f = sched.apply(step)
        assert f == factor(step)
        opt.step()
        for g, lr0 in zip(opt.param_groups, initial):
            assert g["lr"] == pytest.approx(lr0 * f, rel=1e-12)
            assert g["initial_lr"] == lr0
        lrs = [g["lr"] for g in opt.param_groups]
        assert [lr / lrs[0] for lr in lrs] == pytest.approx([lr / initial[0] for lr in initial], rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(initial[0] * 0.05)


# ---- weight decay, measured from one AdamW step with zero gradients -------------------------------
# With g = 0 Adam's moments stay 0 and its update is 0 / (0 + eps) = 0, so the only change
# is AdamW's p <- p * (1 - lr_group * wd_group): the decay each mode promises.

def _one_zero_grad_step(cfg: OptimConfig, factor: float, tokens_per_step: int = 256):
    model, table = mup_model()
    opt = build_optimizer(model, table, cfg, tokens_per_step=tokens_per_step, total_tokens=1e6)
    GroupLR(opt, lambda step: factor).apply(0)
    before = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    roles = {n: p.role.value for n, p in model.named_parameters()}
    lr_mult = {r["name"]: r["lr_mult"] for r in table}
    after = {n: p.detach().double() for n, p in model.named_parameters()}
    return before, after, roles, lr_mult


def _assert_decay(before, after, name, decay):
    torch.testing.assert_close(after[name], before[name] * (1.0 - decay), rtol=2e-7, atol=1e-12, msg=name)


@pytest.mark.parametrize("mode", ["coupled", "independent", "timescale"])
def test_norms_get_no_weight_decay(mode):
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, weight_decay_mode=mode, wd_timescale_tokens=256 * 50)
    before, after, roles, _ = _one_zero_grad_step(cfg, factor=1.0)
    norms = [n for n, r in roles.items() if r == "norm"]
    assert norms
    for n in norms:
        assert torch.equal(after[n], before[n]), n
    model, table = mup_model()
    for g in build_optimizer(model, table, cfg, 256, 1e6).param_groups:
        assert (g["weight_decay"] == 0) == (g["roles"] == ["norm"])


def test_coupled_decay_is_group_lr_times_lambda():
    lr, lam, f = 1e-2, 0.1, 0.5
    before, after, roles, lr_mult = _one_zero_grad_step(OptimConfig(lr=lr, weight_decay=lam), factor=f)
    seen = set()
    for n, role in roles.items():
        if role != "norm":
            _assert_decay(before, after, n, f * lr * lr_mult[n] * lam)
            seen.add(lr_mult[n])
    assert seen == {1.0, 1 / M}  # two different decays: coupled follows the group LR


def test_independent_decay_is_factor_times_lambda_for_every_group():
    lr, lam, f = 1e-2, 0.1, 0.5
    cfg = OptimConfig(lr=lr, weight_decay=lam, weight_decay_mode="independent")
    before, after, roles, lr_mult = _one_zero_grad_step(cfg, factor=f)
    assert set(lr_mult.values()) == {1.0, 1 / M}
    for n, role in roles.items():
        if role != "norm":
            _assert_decay(before, after, n, f * lam)  # no lr, no lr_mult


@pytest.mark.parametrize("lr", [1e-2, 3e-4])
def test_timescale_decay_is_tokens_per_step_over_tau_for_every_group(lr):
    tokens_per_step, tau_tokens = 256, 256 * 40.0
    cfg = OptimConfig(lr=lr, weight_decay=123.0, weight_decay_mode="timescale", wd_timescale_tokens=tau_tokens)
    for f in (1.0, 0.25):
        before, after, roles, _ = _one_zero_grad_step(cfg, factor=f, tokens_per_step=tokens_per_step)
        for n, role in roles.items():
            if role != "norm":
                # EMA timescale tau = 1/(eta lambda) in tokens: per-step decay tokens_per_step/tau,
                # scaled by the schedule factor; lambda itself is ignored.
                _assert_decay(before, after, n, f * tokens_per_step / tau_tokens)


# ---- token horizon ---------------------------------------------------------------------------------

def test_horizon_rule_scales_lr_as_power_of_tokens():
    beta, d0, lr = 0.3509, 1e6, 3e-3
    cfg = OptimConfig(lr=lr, horizon_beta=beta, horizon_base_tokens=d0)
    assert horizon_lr(cfg, d0) == pytest.approx(lr)
    assert horizon_lr(cfg, 8 * d0) == pytest.approx(lr * 8 ** -beta)
    assert horizon_lr(cfg, 8 * d0) / horizon_lr(cfg, 2 * d0) == pytest.approx(4 ** -beta)
    assert horizon_lr(OptimConfig(lr=lr), 8 * d0) == lr  # beta = 0: off
    model, table = mup_model(moe=False)
    opt = build_optimizer(model, table, cfg, tokens_per_step=32, total_tokens=8 * d0)
    mults = {r["name"]: r["lr_mult"] for r in table}
    names = dict((id(p), n) for n, p in model.named_parameters())
    for g in opt.param_groups:
        for p in g["params"]:
            assert g["lr"] == pytest.approx(lr * 8 ** -beta * mults[names[id(p)]])
            assert g["initial_lr"] == g["lr"]


def test_horizon_rule_needs_base_tokens():
    model, table = mup_model(moe=False)
    with pytest.raises(ValueError, match="horizon_base_tokens"):
        build_optimizer(model, table, OptimConfig(horizon_beta=0.32), tokens_per_step=32, total_tokens=1e6)


# ---- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, field, valid", [
    (dict(name="sgd"), "optim.name", ["adamw"]),
    (dict(weight_decay_mode="decoupled"), "weight_decay_mode", ["coupled", "independent", "timescale"]),
    (dict(weight_decay_mode="timescale"), "wd_timescale_tokens", []),
    (dict(lr=0.0), "lr", []),
    (dict(weight_decay=-1.0), "weight_decay", []),
])
def test_optim_validation_errors(kw, field, valid):
    with pytest.raises(ValueError, match=field) as e:
        validate_optim(OptimConfig(**kw))
    for v in valid:
        assert v in str(e.value)


@pytest.mark.parametrize("kw, field, valid", [
    (dict(name="linear"), "schedule.name", ["wsd", "cosine", "constant"]),
    (dict(decay_shape="exp"), "decay_shape", ["linear", "cosine", "1-sqrt"]),
    (dict(decay_fraction=0.0), "decay_fraction", []),
    (dict(final_lr_frac=1.5), "final_lr_frac", []),
    (dict(warmup_steps=100), "warmup_steps", []),
    (dict(name="cosine", decay_branches=[1000]), "decay_branches", []),
])
def test_schedule_validation_errors(kw, field, valid):
    with pytest.raises(ValueError, match=field) as e:
        build_schedule(ScheduleConfig(**kw), total_steps=100)
    for v in valid:
        assert v in str(e.value)


def test_param_table_must_cover_the_model():
    model, table = mup_model(moe=False)
    with pytest.raises(ValueError, match="disagree"):
        build_optimizer(model, table[:-1], OptimConfig(), tokens_per_step=32, total_tokens=1e6)
