"""Property tests for parametrization/: roles, deterministic init, muP == SP at base
width (init, forward, AdamW updates), and the muP table of PAPER.md Sec. 3 at m = 2, 4.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import build_model_and_param
from lrscale.models import ModelConfig, MoEConfig, Transformer
from lrscale.optim import OptimConfig, build_optimizer
from lrscale.parametrization import (
    PARAMETRIZATIONS, ParametrizationConfig, Role, build_parametrization, init_weights, param_table,
)

SIGMA = 0.02
HIDDEN = {"attn_qkv", "attn_out", "mlp_in", "mlp_out", "expert_in", "expert_out"}
OUTPUT_PROJ = {"attn_out", "mlp_out", "expert_out"}


def cfg_of(d_model: int = 32, moe: bool = True, **kw) -> ModelConfig:
    m = MoEConfig(num_experts=4, top_k=2, d_expert=16, shared_expert=True, first_dense_layers=1) if moe else MoEConfig()
    # n_heads fixed: d_head grows with width (the muP attention rule is about d_head).
    return ModelConfig(d_model=d_model, n_layers=2, n_heads=2, vocab_size=64, seq_len=16, moe=m, **kw)



def expected_role(name: str) -> str:
    """Role from the module path alone, written independently of the model code."""
    if name == "embed":
        return "embedding"
    if name == "unembed.weight":
        return "unembedding"
    if name.endswith("norm.weight"):
        return "norm"
    if name.endswith("attn.wqkv.weight"):
        return "attn_qkv"
    if name.endswith("attn.wo.weight"):
        return "attn_out"
    if name.endswith("router.weight"):
        return "router"
    if name.endswith("moe.w_in"):
        return "expert_in"
    if name.endswith("moe.w_out"):
        return "expert_out"
    if name.endswith(("mlp.w_in.weight", "shared.w_in.weight")):
        return "mlp_in"
    if name.endswith(("mlp.w_out.weight", "shared.w_out.weight")):
        return "mlp_out"
    raise AssertionError(f"unexpected parameter {name}")


# ---- roles --------------------------------------------------------------------------------

@pytest.mark.parametrize("moe", [False, True])
def test_every_parameter_has_its_role(moe):
    model, param = build_model_and_param(cfg_of(moe=moe))
    seen = set()
    for name, p in model.named_parameters():
        assert isinstance(getattr(p, "role", None), Role), name
        assert p.role.value == expected_role(name), name
        seen.add(p.role.value)
    assert seen == set(r.value for r in Role) - ({"expert_in", "expert_out", "router"} if not moe else set())
    rows = param_table(model, param)
    assert [r["name"] for r in rows] == [n for n, _ in model.named_parameters()]


def test_parameter_without_role_is_a_type_error_naming_it():
    model, param = build_model_and_param(cfg_of(moe=False))
    model.blocks[1].stray_scale = nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match=r"blocks\.1\.stray_scale"):
        param_table(model, param)
    with pytest.raises(TypeError, match=r"blocks\.1\.stray_scale"):
        init_weights(model, param, seed=0)


# ---- muP equals SP at base width -------------------------------------------------------------

@pytest.mark.parametrize("moe", [False, True])
def test_mup_equals_sp_at_base_width_init_forward_and_adamw_steps(moe):
    cfg = cfg_of(d_model=32, moe=moe)  # d_head = 16: 1/sqrt(16) and sqrt(16)/16 are both exact
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    tgt = torch.roll(idx, -1, dims=1)
    models, logits = {}, {}
    for name in ("sp", "mup"):
        model, param = build_model_and_param(cfg, name, seed=3, base_d_model=32)
        models[name] = (model, param)
        logits[name] = model(idx).logits.detach()
    (sp, sp_p), (mu, mu_p) = models["sp"], models["mup"]
    for (n, a), (_, b) in zip(sp.named_parameters(), mu.named_parameters()):
        assert torch.equal(a, b), f"init differs at {n}"
    assert torch.equal(logits["sp"], logits["mup"])
    assert param_table(sp, sp_p) == param_table(mu, mu_p)

    ocfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    opts = {k: build_optimizer(m, param_table(m, p), ocfg, tokens_per_step=32, total_tokens=1e4)
            for k, (m, p) in models.items()}
    for _ in range(3):
        for k, (m, _) in models.items():
            out = m(idx, tgt)
            (out.loss + out.aux_loss).backward()
            opts[k].step()
            opts[k].zero_grad()
    moved = False
    for (n, a), (_, b), (_, p0) in zip(sp.named_parameters(), mu.named_parameters(), build_model_and_param(cfg, seed=3)[0].named_parameters()):
        assert torch.equal(a, b), f"after 3 steps {n} differs"
        moved |= not torch.equal(a, p0)
    assert moved


# ---- the muP table at m = 2, 4 ------------------------------------------------------------------

# SwiGLU width 8/3 d rounded up to a multiple of 32, by hand: d 32 -> 85.3 -> 96, 64 -> 170.7 -> 192,
# 128 -> 341.3 -> 352.
DERIVED_D_FF = {32: 96, 64: 192, 128: 352}


def fan_in_ratio(name: str, m: int, base: int = 32) -> float:
    """muP's per-matrix width ratio in cfg_of's models: fan-in here over fan-in at base width.
    The dense MLP's down-projection has fan-in d_ff (derived, rounded), the experts' (and the shared
    expert's) d_expert = 16 set by hand, which the base shape takes to grow with d_model; every
    other hidden matrix has fan-in d_model."""
    if name.endswith("mlp.w_out.weight"):
        return DERIVED_D_FF[base * m] / DERIVED_D_FF[base]
    return float(m)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("moe", [False, True])
def test_mup_table_follows_paper_rules(m, moe):
    base, L = 32, 2
    cfg = cfg_of(d_model=base * m, moe=moe)
    sp_model, sp = build_model_and_param(cfg, "sp")
    mu_model, mu = build_model_and_param(cfg, "mup", base_d_model=base)
    sp_rows = {r["name"]: r for r in param_table(sp_model, sp)}
    for r in param_table(mu_model, mu):
        role, s = r["role"], sp_rows[r["name"]]
        # SP: sigma everywhere, output projections x 1/sqrt(2L); one LR, one eps; norms undecayed.
        sp_std = SIGMA / math.sqrt(2 * L) if role in OUTPUT_PROJ else SIGMA
        assert s["init_std"] == pytest.approx(sp_std, rel=1e-12), r["name"]
        assert (s["lr_mult"], s["eps_mult"], s["wd_mult"]) == (1.0, 1.0, 0.0 if role == "norm" else 1.0)
        if role in HIDDEN:  # TP-V Table 3: init var sigma^2/r, Adam LR / r; eps / r, r = this matrix's fan-in ratio
            r_fan = fan_in_ratio(r["name"], m)
            assert r["init_std"] == pytest.approx(sp_std / math.sqrt(r_fan), rel=1e-12), r["name"]
            assert r["lr_mult"] == pytest.approx(1 / r_fan, rel=1e-12)
            assert r["eps_mult"] == pytest.approx(1 / r_fan, rel=1e-12)
            assert r["wd_mult"] == 1.0
        else:               # embedding, norms, router, unembedding: as SP
            assert (r["init_std"], r["lr_mult"], r["eps_mult"], r["wd_mult"]) == \
                (s["init_std"], s["lr_mult"], s["eps_mult"], s["wd_mult"]), r["name"]


@pytest.mark.parametrize("m", [2, 4])
def test_mup_forward_multipliers_and_attention_scale(m):
    base, n_heads = 32, 2
    cfg = cfg_of(d_model=base * m)
    d_head, base_d_head = base * m // n_heads, base // n_heads
    model, mu = build_model_and_param(cfg, "mup", base_d_model=base)
    assert mu.output_mult == pytest.approx(1 / m) and mu.router_mult == pytest.approx(1 / m)
    assert mu.input_mult == 1.0 and mu.residual_mult == 1.0
    # 1/d_head attention, times sqrt(base d_head): the base model's head size by default ...
    assert mu.attn_scale(d_head) == pytest.approx(math.sqrt(base_d_head) / d_head)
    assert mu.attn_scale(d_head) == pytest.approx(1 / (math.sqrt(m) * math.sqrt(d_head)))
    # ... or an explicit one.
    mu8 = build_parametrization(ParametrizationConfig(name="mup", base_d_model=base, base_d_head=8), cfg)
    assert mu8.attn_scale(d_head) == pytest.approx(math.sqrt(8) / d_head)
    # The model really uses them.
    assert model.output_mult == pytest.approx(1 / m)
    for b in model.blocks:
        assert b.attn.scale == pytest.approx(math.sqrt(base_d_head) / d_head)
    for moe in model.moe_layers():
        assert moe.router.mult == pytest.approx(1 / m)
    sp = build_parametrization(ParametrizationConfig(name="sp"), cfg)
    assert (sp.output_mult, sp.router_mult, sp.attn_scale(d_head)) == (1.0, 1.0, 1 / math.sqrt(d_head))


@pytest.mark.parametrize("name", ["sp", "mup"])
def test_init_draws_have_the_table_std(name):
    model, param = build_model_and_param(cfg_of(d_model=128), name, base_d_model=32)
    for r, (n, p) in zip(param_table(model, param), model.named_parameters()):
        if r["role"] == "norm":
            assert torch.equal(p, torch.ones_like(p)), n
            continue
        assert abs(p.mean().item()) < 4 * r["init_std"] / math.sqrt(p.numel()), n
        assert p.std().item() == pytest.approx(r["init_std"], rel=0.1), n


def test_init_deterministic_for_seed_and_changes_with_seed():
    cfg = cfg_of()
    a, _ = build_model_and_param(cfg, "mup", seed=7, base_d_model=16)
    b, _ = build_model_and_param(cfg, "mup", seed=7, base_d_model=16)
    c, _ = build_model_and_param(cfg, "mup", seed=8, base_d_model=16)
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), n
        if "norm" not in n:
            assert not torch.equal(pa, pc), n
    # Init ignores (and leaves alone) the global RNG.
    torch.manual_seed(0)
    state = torch.get_rng_state()
    build_model_and_param(cfg, seed=7)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["sp", "mup"])
def test_zero_init_options_give_zeros(name):
    model, _ = build_model_and_param(cfg_of(d_model=64), name, base_d_model=32, output_zero_init=True, router_zero_init=True)
    assert model.unembed.weight.abs().max() == 0
    routers = [moe.router.weight for moe in model.moe_layers()]
    assert routers and all(w.abs().max() == 0 for w in routers)
    assert model.embed.abs().max() > 0 and model.blocks[0].attn.wqkv.weight.abs().max() > 0
    # Zero router: uniform routing probabilities at step 0.
    r = model.moe_layers()[0].router(torch.randn(5, 64, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(r.probs, torch.full((5, 4), 0.25))


def test_unknown_parametrization_lists_valid_names():
    with pytest.raises(ValueError, match="ntk") as e:
        build_parametrization(ParametrizationConfig(name="ntk"), cfg_of())
    for valid in PARAMETRIZATIONS:
        assert valid in str(e.value)
    assert set(PARAMETRIZATIONS) >= {"sp", "mup"}
