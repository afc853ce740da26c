"""The parametrization suite of PAPER.md Sec. 3, role by role: muP width rules (MoE included),
depth rules (CompleteP / Depth-muP), Adam eps, the `mup` weight-decay convention measured
from one AdamW step, the token-horizon rule composed with them, and refused configs.

Expected numbers are written here from the paper's table, independently of parametrization/.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_model_and_param
from lrscale.models import ModelConfig, MoEConfig, Transformer
from lrscale.optim import GroupLR, OptimConfig, build_optimizer
from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights, param_table

SIGMA = 0.02
BASE_D, BASE_L = 32, 2
HIDDEN = {"attn_qkv", "attn_out", "mlp_in", "mlp_out", "expert_in", "expert_out"}
OUTPUT_PROJ = {"attn_out", "mlp_out", "expert_out"}
REPO = Path(__file__).resolve().parents[1]


def model_cfg(m: int, n_layers: int = BASE_L) -> ModelConfig:
    # Heads fixed at 2 (d_head grows with width); expert width follows d_model (hidden experts);
    # a shared expert and a leading dense block, so every role is present.
    d = BASE_D * m
    return ModelConfig(d_model=d, n_layers=n_layers, n_heads=2, d_ff=2 * d, vocab_size=64, seq_len=16,
                       moe=MoEConfig(num_experts=4, top_k=2, shared_expert=True, first_dense_layers=1))


def build(name: str, m: int = 1, n_layers: int = BASE_L, seed: int = 0, **kw):
    """This file's model family at width multiplier m and depth n_layers, with base shape (BASE_D, BASE_L)."""
    return build_model_and_param(model_cfg(m, n_layers), name, seed=seed,
                                 **{"init_std": SIGMA, "base_d_model": BASE_D, "base_n_layers": BASE_L, **kw})


def expected_row(name: str, role: str, m: float, L: int, alpha: float) -> tuple[float, float, float, float]:
    """(init_std, lr_mult, eps_mult, wd_mult) from PAPER.md Sec. 3, written out per role."""
    w = m if name == "mup" else 1.0             # SP has no width rules
    dm = L / BASE_L if alpha > 0 else 1.0       # depth multiplier; alpha = 0: no depth rules
    init_L = BASE_L if alpha > 0 else L         # GPT-2 1/sqrt(2L) init uses L0 under depth rules
    if role == "norm":
        return SIGMA, 1.0, 1.0, 0.0
    if role in HIDDEN:
        std = SIGMA / math.sqrt(2 * init_L) if role in OUTPUT_PROJ else SIGMA
        return std / math.sqrt(w), dm ** (alpha - 1) / w, dm ** -alpha / w, 1.0
    if role == "router":                        # output-like in width, in-block in depth
        return SIGMA, dm ** (alpha - 1), dm ** -alpha, 1.0
    return SIGMA, 1.0, 1.0, 1.0                 # embedding, unembedding


CASES = [(name, m, L, alpha) for name in ("sp", "mup") for m in (1, 2, 4)
         for L, alpha in ((2, 0.0), (8, 0.0), (2, 1.0), (4, 1.0), (8, 1.0), (8, 0.5))]


@pytest.mark.parametrize("name, m, L, alpha", CASES)
def test_param_table_matches_paper_role_by_role(name, m, L, alpha):
    model, param = build(name, m, L, depth_alpha=alpha)
    roles = set()
    for r in param_table(model, param):
        std, lr, eps, wd = expected_row(name, r["role"], m, L, alpha)
        got = (r["init_std"], r["lr_mult"], r["eps_mult"], r["wd_mult"])
        if r["role"] != "norm":  # norms start at 1 whatever init_std says
            assert got[0] == pytest.approx(std, rel=1e-12), (r["name"], "init_std")
        assert got[1:] == pytest.approx((lr, eps, wd), rel=1e-12), r["name"]
        roles.add(r["role"])
    assert roles == HIDDEN | {"embedding", "unembedding", "norm", "router"}


@pytest.mark.parametrize("name, m, L, alpha", CASES)
def test_forward_multipliers_match_paper(name, m, L, alpha):
    model, param = build(name, m, L, depth_alpha=alpha)
    d_head = BASE_D * m // 2
    width = m if name == "mup" else 1.0
    residual = (BASE_L / L) ** alpha                       # CompleteP: branches x (L0/L)^alpha
    assert param.residual_mult == pytest.approx(residual, rel=1e-12)
    assert param.output_mult == pytest.approx(1 / width) and param.router_mult == pytest.approx(1 / width)
    assert param.input_mult == 1.0
    # muP: 1/d_head times sqrt(base d_head) (= SP at base width); SP: 1/sqrt(d_head)
    scale = math.sqrt(BASE_D // 2) / d_head if name == "mup" else 1 / math.sqrt(d_head)
    assert param.attn_scale(d_head) == pytest.approx(scale, rel=1e-12)
    # ... and the model really applies them, in every block.
    assert all(b.branch_mult == pytest.approx(residual) for b in model.blocks)
    assert all(b.attn.scale == pytest.approx(scale) for b in model.blocks)
    assert all(moe.router.mult == pytest.approx(1 / width) for moe in model.moe_layers())
    assert model.output_mult == pytest.approx(1 / width)


@pytest.mark.parametrize("name", ["sp", "mup"])
def test_depth_alpha_zero_is_plain_parametrization_whatever_the_base_depth(name):
    plain, p_plain = build(name, m=2, n_layers=8)
    cfg = model_cfg(2, 8)
    odd = build_parametrization(ParametrizationConfig(name=name, base_d_model=BASE_D, base_n_layers=7), cfg)
    assert param_table(plain, odd) == param_table(plain, p_plain)
    assert odd.residual_mult == 1.0


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_depth_rules_are_the_identity_at_base_depth(alpha):
    model, with_rules = build("mup", m=2, n_layers=BASE_L, depth_alpha=alpha)
    _, without = build("mup", m=2, n_layers=BASE_L)
    assert param_table(model, with_rules) == param_table(model, without)
    assert with_rules.residual_mult == 1.0


def test_completep_equals_sp_with_depth_rules_at_base_width():
    """muP and SP differ only in width rules, so with the same depth rules they coincide at m = 1."""
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    sp, p_sp = build("sp", m=1, n_layers=4, seed=5, depth_alpha=1.0)
    mu, p_mu = build("mup", m=1, n_layers=4, seed=5, depth_alpha=1.0)
    assert param_table(sp, p_sp) == param_table(mu, p_mu)
    assert torch.equal(sp(idx).logits, mu(idx).logits)


def test_residual_stream_at_init_is_bounded_in_depth_with_alpha_one():
    """x_L = x_0 + sum_l (L0/L) f_l: the residual stream does not grow with L under CompleteP
    (the trained-model version is the coordinate check, tests/test_coord_check.py)."""
    idx = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))

    def residual_rms(L: int, alpha: float) -> float:
        model, _ = build("mup", m=1, n_layers=L, depth_alpha=alpha, init_std=0.2)  # large init: branches dominate
        x = torch.nn.functional.embedding(idx, model.embed) * model.input_mult
        with torch.no_grad():
            for b in model.blocks:
                x, _, _ = b(x)
        return float(x.pow(2).mean().sqrt())

    one = [residual_rms(L, 1.0) for L in (2, 8, 32)]
    assert max(one) <= 1.2 * one[0]


# ---- weight decay: the `mup` convention, measured from one AdamW step --------------------------

def _zero_grad_step(model, param, cfg: OptimConfig, factor: float = 0.5):
    """With zero gradients Adam's update is 0, so AdamW only decays: p <- p (1 - lr_g wd_g)."""
    table = param_table(model, param)
    opt = build_optimizer(model, table, cfg, tokens_per_step=64, total_tokens=1e6)
    GroupLR(opt, lambda step: factor).apply(0)
    before = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return table, before, {n: p.detach().double() for n, p in model.named_parameters()}


@pytest.mark.parametrize("m, L, alpha", [(4, 2, 0.0), (2, 8, 1.0), (4, 8, 0.5)])
def test_mup_wd_convention_keeps_eta_lambda_fixed_for_every_decayed_parameter(m, L, alpha):
    lr, lam, f = 1e-2, 0.1, 0.5
    model, param = build("mup", m, L, depth_alpha=alpha, wd_convention="mup")
    table, before, after = _zero_grad_step(model, param, OptimConfig(lr=lr, weight_decay=lam), f)
    lr_mults = set()
    for r in table:
        if r["role"] == "norm":
            assert r["wd_mult"] == 0.0 and torch.equal(after[r["name"]], before[r["name"]])
            continue
        assert r["wd_mult"] * r["lr_mult"] == pytest.approx(1.0, rel=1e-12), r["name"]
        # the decay each step is f * eta * lambda, the same as at base shape, whatever the group LR
        torch.testing.assert_close(after[r["name"]], before[r["name"]] * (1 - f * lr * lam), rtol=2e-7, atol=1e-12)
        lr_mults.add(round(r["lr_mult"], 12))
    assert len(lr_mults) >= 2  # really different group LRs, one decay
    if alpha == 0.0:  # the mup library's MuAdamW: hidden lambda x m
        assert all(r["wd_mult"] == pytest.approx(m) for r in table if r["role"] in HIDDEN)


def test_without_the_convention_coupled_decay_follows_the_group_lr():
    lr, lam, f = 1e-2, 0.1, 0.5
    model, param = build("mup", 4)
    table, before, after = _zero_grad_step(model, param, OptimConfig(lr=lr, weight_decay=lam), f)
    for r in table:
        if r["role"] != "norm":
            torch.testing.assert_close(after[r["name"]], before[r["name"]] * (1 - f * lr * r["lr_mult"] * lam),
                                       rtol=2e-7, atol=1e-12)


def test_mup_wd_convention_is_a_no_op_for_plain_sp():
    model, plain = build("sp", 2)
    _, conv = build("sp", 2, wd_convention="mup")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wd_convention"} for r in rows]  # noqa: E731
    assert strip(param_table(model, conv)) == strip(param_table(model, plain))


@pytest.mark.parametrize("mode", ["independent", "timescale"])
def test_mup_wd_convention_with_uncoupled_decay_is_refused(mode):
    model, param = build("mup", 2, wd_convention="mup")
    cfg = OptimConfig(weight_decay=0.1, weight_decay_mode=mode, wd_timescale_tokens=1e5)
    with pytest.raises(ValueError, match="wd_convention=mup") as e:
        build_optimizer(model, param_table(model, param), cfg, tokens_per_step=64, total_tokens=1e6)
    assert "weight_decay_mode=coupled" in str(e.value)


# ---- token horizon, composed with the width and depth multipliers ------------------------------

def test_horizon_rule_scales_every_group_lr_on_top_of_its_multiplier():
    beta, d0, lr = 0.3509, 2e5, 4e-3
    model, param = build("mup", 4, 8, depth_alpha=0.5)
    table = param_table(model, param)
    mults = {r["name"]: r["lr_mult"] for r in table}
    names = {id(p): n for n, p in model.named_parameters()}
    for D in (d0, 4 * d0, d0 / 2):
        opt = build_optimizer(model, table, OptimConfig(lr=lr, horizon_beta=beta, horizon_base_tokens=d0),
                              tokens_per_step=64, total_tokens=D)
        for g in opt.param_groups:
            for p in g["params"]:  # eta(D) = eta(D0) (D/D0)^-beta, times the group's multiplier
                assert g["lr"] == pytest.approx(lr * (D / d0) ** -beta * mults[names[id(p)]], rel=1e-12)


# ---- refused configs -----------------------------------------------------------------------------

@pytest.mark.parametrize("kw, field", [
    (dict(depth_alpha=1.5), "depth_alpha"),
    (dict(depth_alpha=-0.5), "depth_alpha"),
    (dict(base_n_layers=0), "base_n_layers"),
    (dict(base_d_model=0), "base_d_model"),
    (dict(base_d_head=-1), "base_d_head"),
    (dict(init_std=0.0), "init_std"),
    (dict(wd_convention="decoupled"), "wd_convention"),
])
def test_bad_parametrization_config_is_refused_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=f"parametrization.{field}"):
        ParametrizationConfig(**kw)


def test_bad_wd_convention_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: none, mup"):
        ParametrizationConfig(wd_convention="muP")


@pytest.mark.parametrize("args, needle", [
    (["parametrization.depth_alpha=2"], "parametrization.depth_alpha"),
    (["parametrization=mup", "parametrization.wd_convention=mup", "optim.weight_decay_mode=independent"],
     "optim.weight_decay_mode=coupled"),
])
def test_train_cli_exits_with_a_clear_message_for_bad_parametrization(args, needle, tmp_path, data_cache):
    cmd = [sys.executable, "train.py", *args, f"run.root={tmp_path}", f"data.cache_dir={data_cache}",
           "data.max_bytes=400000", "data.val_fraction=0.25", "data.tokenizer.vocab_size=384",
           "train.steps=4", "schedule.warmup_steps=1", "logging.progress=false"]
    env = {k: v for k, v in os.environ.items() if k != "LRSCALE_CACHE"}
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode != 0
    assert needle in p.stderr + p.stdout


# ---- muP scales each hidden matrix by its own fan-in ratio (d_ff is rounded) ------------------

def test_mup_multipliers_follow_each_matrix_fan_in_where_d_ff_is_rounded():
    """Base width 64 -> 128 with the derived SwiGLU width: d_ff = 8/3 d rounded up to a multiple
    of 32 is 192 -> 352 (170.7 -> 192, 341.3 -> 352, by hand), a ratio of 11/6, not m = 2. The
    down-projections (fan-in d_ff, or d_expert = d_ff) get LR and eps x 6/11 and init std
    x sqrt(6/11); everything with fan-in d_model gets 1/2 (TP-V Table 3 per fan-in; `mup`'s MuAdam
    divides each matrix's LR by its fan-in width multiplier)."""
    cfg = ModelConfig(d_model=128, n_layers=2, n_heads=2, vocab_size=64, seq_len=16,
                      moe=MoEConfig(num_experts=4, top_k=2, shared_expert=True, first_dense_layers=1))
    param = build_parametrization(ParametrizationConfig(name="mup", init_std=SIGMA, base_d_model=64), cfg)
    table = {r["name"]: r for r in param_table(Transformer(cfg, param), param)}
    down = ("blocks.0.mlp.w_out.weight", "blocks.1.moe.w_out", "blocks.1.moe.shared.w_out.weight")
    for name in down:
        r = table[name]
        assert r["lr_mult"] == pytest.approx(6 / 11, rel=1e-12), name
        assert r["eps_mult"] == pytest.approx(6 / 11, rel=1e-12), name
        assert r["init_std"] == pytest.approx(SIGMA / math.sqrt(2 * 2) * math.sqrt(6 / 11), rel=1e-12), name
    for name in ("blocks.0.attn.wqkv.weight", "blocks.0.attn.wo.weight", "blocks.0.mlp.w_in.weight",
                 "blocks.1.moe.w_in", "blocks.1.moe.shared.w_in.weight"):
        assert table[name]["lr_mult"] == pytest.approx(0.5, rel=1e-12), name
        assert table[name]["eps_mult"] == pytest.approx(0.5, rel=1e-12), name
    # The old rule (everything / m) would have given 0.5 to the down-projections too: 8% off.
    assert abs(table[down[0]]["lr_mult"] / 0.5 - 1) > 0.08


def test_mup_base_widths_set_by_hand_override_the_proportional_default():
    """A d_ff set by hand is taken to grow with d_model (ratio m) unless parametrization.base_d_ff
    says what it was at base width; base_d_expert likewise."""
    cfg = ModelConfig(d_model=128, n_layers=2, n_heads=2, d_ff=300, vocab_size=64, seq_len=16,
                      moe=MoEConfig(num_experts=4, top_k=2, d_expert=96, first_dense_layers=1))

    def rows(**kw) -> dict[str, float]:
        param = build_parametrization(ParametrizationConfig(name="mup", base_d_model=64, **kw), cfg)
        return {r["name"]: r["lr_mult"] for r in param_table(Transformer(cfg, param), param)}

    default = rows()
    assert default["blocks.0.mlp.w_out.weight"] == pytest.approx(1 / 2) and default["blocks.1.moe.w_out"] == pytest.approx(1 / 2)
    given = rows(base_d_ff=100, base_d_expert=96)  # d_ff 100 -> 300 (x3); d_expert fixed at 96 (x1)
    assert given["blocks.0.mlp.w_out.weight"] == pytest.approx(1 / 3) and given["blocks.1.moe.w_out"] == pytest.approx(1.0)
    assert given["blocks.0.attn.wo.weight"] == pytest.approx(1 / 2)


def test_mup_refuses_an_ambiguous_base_shape():
    """Two widths equal here but scaling differently from base: a matrix with that fan-in could be either."""
    cfg = ModelConfig(d_model=128, n_layers=2, n_heads=2, d_ff=352, vocab_size=64, seq_len=16,
                      moe=MoEConfig(num_experts=4, top_k=2, d_expert=352, first_dense_layers=1))
    with pytest.raises(ValueError, match="base_d_ff / base_d_expert"):
        build_parametrization(ParametrizationConfig(name="mup", base_d_model=64, base_d_expert=352), cfg)


def test_sp_with_mup_learning_rates_only_changes_nothing_but_hidden_lrs():
    """The module-wise ablation's middle arm: SP's table, forward and eps, muP's hidden LRs."""
    cfg = model_cfg(4)
    sp = build_parametrization(ParametrizationConfig(name="sp", init_std=SIGMA, base_d_model=BASE_D), cfg)
    mid = build_parametrization(ParametrizationConfig(name="sp_mup_lr", init_std=SIGMA, base_d_model=BASE_D), cfg)
    mu = build_parametrization(ParametrizationConfig(name="mup", init_std=SIGMA, base_d_model=BASE_D), cfg)
    model = Transformer(cfg, sp)
    rows = {k: {r["name"]: r for r in param_table(model, p)} for k, p in (("sp", sp), ("mid", mid), ("mu", mu))}
    for name, r in rows["mid"].items():
        s, m = rows["sp"][name], rows["mu"][name]
        assert (r["init_std"], r["eps_mult"], r["wd_mult"]) == (s["init_std"], s["eps_mult"], s["wd_mult"]), name
        assert r["lr_mult"] == (m["lr_mult"] if r["role"] in HIDDEN else s["lr_mult"]), name
        if r["role"] in HIDDEN:
            assert r["lr_mult"] == pytest.approx(1 / 4)  # d_ff = 2 d grows with d_model: ratio m = 4
    assert (mid.output_mult, mid.router_mult, mid.attn_scale(64)) == (1.0, 1.0, sp.attn_scale(64))
