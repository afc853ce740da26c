"""Property tests for models/: parameter counts and FLOPs against the built model,
fast paths against their plain references, router and MoE invariants, causality,
and config-time validation. Tiny CPU shapes, deterministic, fp32 unless stated.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build_model, tiny_model_config
from torch.utils.flop_counter import FlopCounterMode

from lrscale.models import (
    ModelConfig, MoE, MoEConfig, Transformer, eager_attention,
    grouped_mm_experts, loop_experts, sdpa_attention,
)
from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights



def tokens(cfg: ModelConfig, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=g)


COUNT_CONFIGS = {
    "dense": tiny_model_config(),
    "dense_dff": tiny_model_config(d_ff=40),
    "moe": tiny_model_config(moe=MoEConfig(num_experts=4, top_k=2)),
    "moe_shared": tiny_model_config(moe=MoEConfig(num_experts=4, top_k=1, d_expert=16, shared_expert=True)),
    "moe_first_dense": tiny_model_config(n_layers=3, moe=MoEConfig(num_experts=8, top_k=2, first_dense_layers=1)),
    "gqa": tiny_model_config(d_model=64, n_heads=4, n_kv_heads=2),
    "gqa_moe": tiny_model_config(d_model=64, n_heads=4, n_kv_heads=1, moe=MoEConfig(num_experts=4, top_k=3, d_expert=24)),
}


# ---- parameter counts and FLOPs -----------------------------------------------------------

@pytest.mark.parametrize("name", list(COUNT_CONFIGS))
def test_param_counts_match_built_model(name):
    cfg = COUNT_CONFIGS[name]
    model = build_model(cfg)
    total = active = embed = 0
    for pname, p in model.named_parameters():
        n = p.numel()
        total += n
        if pname.endswith(("moe.w_in", "moe.w_out")):
            # Routed experts: each token uses top_k of the E stacked experts.
            assert n % cfg.moe.num_experts == 0
            active += n * cfg.moe.top_k // cfg.moe.num_experts
        else:
            active += n
        if pname in ("embed", "unembed.weight"):
            embed += n
    assert embed == 2 * cfg.vocab_size * cfg.d_model
    c = cfg.param_counts()
    assert c == {"n_total": total, "n_active": active, "n_active_nonembed": active - embed}
    if cfg.is_moe and cfg.moe.top_k < cfg.moe.num_experts:
        assert c["n_active"] < c["n_total"]
    else:
        assert c["n_active"] == c["n_total"]


@pytest.mark.parametrize("name", ["dense", "moe_shared", "moe_first_dense", "gqa_moe"])
def test_flops_per_token_matches_counted_matmuls(name):
    """3 x forward matmul FLOPs (counted by torch) is the training cost the config predicts."""
    cfg = COUNT_CONFIGS[name]
    model = build_model(cfg)
    idx = tokens(cfg)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(idx)
    fwd_per_token = fc.get_total_flops() / idx.numel()
    L, T, attn_width = cfg.n_layers, cfg.seq_len, cfg.n_heads * cfg.d_head
    # Eager attention computes the full T x T scores; the config counts the causal half.
    full_minus_half = 6 * L * T * attn_width
    # The config's 6N counts the (tiny) norm gains as parameters; matmuls do not.
    norm_params = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert cfg.flops_per_token() == pytest.approx(3 * fwd_per_token - full_minus_half + 6 * norm_params, rel=1e-12)


def test_flops_per_token_is_6n_active_and_ignores_idle_experts():
    a = tiny_model_config(moe=MoEConfig(num_experts=4, top_k=2))
    b = tiny_model_config(moe=MoEConfig(num_experts=8, top_k=2))
    assert b.param_counts()["n_total"] > a.param_counts()["n_total"]
    # Only the router (d x E per MoE layer) grows with E; idle experts cost nothing.
    assert b.flops_per_token() - a.flops_per_token() == 6 * a.n_layers * a.d_model * (8 - 4)
    c = a.param_counts()
    six_n = 6 * (c["n_active_nonembed"] + a.vocab_size * a.d_model)
    attn = 6 * a.n_layers * a.seq_len * a.d_model
    assert a.flops_per_token() == six_n + attn
    assert 6 * c["n_active_nonembed"] < a.flops_per_token() < 6 * c["n_total"]


# ---- attention backends -------------------------------------------------------------------

def test_eager_attention_is_causal_softmax_reference():
    """The reference itself against a per-query loop (GQA: kv head = query head // rep)."""
    g = torch.Generator().manual_seed(0)
    B, nh, nkv, T, hs = 1, 4, 2, 6, 8
    q = torch.randn(B, nh, T, hs, generator=g)
    k, v = torch.randn(2, B, nkv, T, hs, generator=g)
    y = eager_attention(q, k, v, 0.5)
    for h in range(nh):
        kv = h // (nh // nkv)
        for t in range(T):
            w = (k[0, kv, : t + 1] @ q[0, h, t] * 0.5).softmax(-1)
            torch.testing.assert_close(y[0, h, t], w @ v[0, kv, : t + 1], rtol=1e-5, atol=1e-6)


# ---- experts ------------------------------------------------------------------------------

def _moe(seed: int = 0, **moe_kw) -> MoE:
    moe_kw = {"num_experts": 4, "top_k": 2, "d_expert": 16, **moe_kw}
    cfg = tiny_model_config(moe=MoEConfig(**moe_kw))
    param = build_parametrization(ParametrizationConfig(), cfg)
    moe = MoE(cfg, param, "loop")
    init_weights(moe, param, seed)
    return moe


@pytest.mark.parametrize("shared", [False, True])
def test_moe_matches_per_token_dense_reference(shared):
    """Dropless sorted dispatch equals sum_j gate_j * expert_{idx_j}(x_t) computed token by token."""
    moe = _moe(num_experts=4, top_k=2, shared_expert=shared)
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(3))
    y, _, _ = moe(x)
    flat = x.reshape(-1, 32)
    r = moe.router(flat)
    for t in range(flat.shape[0]):
        ref = torch.zeros(32)
        for j in range(moe.top_k):
            e = r.expert_idx[t, j]
            gate, up = (flat[t] @ moe.w_in[e]).chunk(2, -1)
            ref += r.weights[t, j] * ((F.silu(gate) * up) @ moe.w_out[e])
        if shared:
            ref += moe.shared(flat[t:t + 1])[0]
        torch.testing.assert_close(y.reshape(-1, 32)[t], ref, rtol=1e-5, atol=1e-6)


# ---- router invariants --------------------------------------------------------------------

@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_router_topk_distinct_gates_and_tokens_routed_k_times(top_k):
    moe = _moe(num_experts=6, top_k=top_k)
    x = torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(1))
    flat = x.reshape(-1, 32)
    r = moe.router(flat)
    n = flat.shape[0]
    assert r.expert_idx.shape == (n, top_k)
    for row in r.expert_idx.tolist():
        assert len(set(row)) == top_k
    assert (r.weights > 0).all()
    # The chosen experts are the top_k of the fp32 softmax (no balancing bias in aux_loss mode).
    probs = (flat.double() @ moe.router.weight.double().T).softmax(-1)
    chosen = probs.gather(-1, r.expert_idx)
    others = probs.masked_fill(torch.zeros_like(probs, dtype=torch.bool).scatter(-1, r.expert_idx, True), -1)
    assert (chosen.min(-1).values >= others.max(-1).values).all()
    # Gates: renormalised over the chosen experts (Mixtral) for k > 1; the probability itself for k = 1
    # (Switch), since renormalised it would be 1 for every token.
    expected = chosen / chosen.sum(-1, keepdim=True) if top_k > 1 else chosen
    torch.testing.assert_close(r.weights.double(), expected)
    if top_k > 1:
        torch.testing.assert_close(r.weights.sum(-1), torch.ones(n))
    _, _, stats = moe(x)
    counts = stats["tokens_per_expert"]
    assert counts.sum().item() == n * top_k
    assert torch.equal(counts, torch.bincount(r.expert_idx.reshape(-1), minlength=6))


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_router_learns_from_the_loss_at_every_top_k(top_k):
    """With the balance and z losses off, the router's gradient comes from the output alone; it must
    not vanish at top-1 (a renormalised single gate would be 1, constant in the router weights)."""
    moe = _moe(num_experts=4, top_k=top_k, aux_loss_coef=0.0, z_loss_coef=0.0)
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(5))
    y, aux, _ = moe(x)
    target = torch.randn(y.shape, generator=torch.Generator().manual_seed(6))
    ((y * target).sum() + aux).backward()
    scale = moe.w_in.grad.abs().max()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().max() > 1e-3 * scale


def test_router_in_fp32_for_bf16_input():
    moe = _moe(num_experts=4, top_k=2)
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(2)).bfloat16()
    r = moe.router(x)
    for t in (r.logits, r.probs, r.weights):
        assert t.dtype == torch.float32
    ref = x.float() @ moe.router.weight.float().T
    torch.testing.assert_close(r.logits, ref, rtol=1e-6, atol=1e-6)
    # A bf16 matmul would round the logits; fp32 routing does not.
    assert not torch.equal(r.logits, (x @ moe.router.weight.bfloat16().T).float())
    # Inside bf16 autocast (how the training stack runs bf16) the router matmul stays fp32.
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        r = moe.router(x.float())
    assert r.logits.dtype == r.probs.dtype == r.weights.dtype == torch.float32
    torch.testing.assert_close(r.logits, ref, rtol=1e-6, atol=1e-6)
    # Also with the whole MoE in bf16, the router still works in fp32 and the output stays bf16.
    moe = moe.to(torch.bfloat16)
    assert moe.router(x).logits.dtype == torch.float32
    y, aux, _ = moe(x.view(1, 32, 32))
    assert y.dtype == torch.bfloat16 and aux.dtype == torch.float32


def test_moe_model_under_bf16_autocast_fwd_bwd():
    """bf16 autocast with fp32 master weights: runs, routes in fp32, stays close to fp32."""
    cfg = COUNT_CONFIGS["moe_shared"]
    model = build_model(cfg)
    idx = tokens(cfg)
    ref = model(idx, idx)
    routings = []
    for moe in model.moe_layers():
        moe.router.register_forward_hook(lambda mod, args, out: routings.append(out))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(idx, idx)
    assert routings and all(r.logits.dtype == torch.float32 for r in routings)
    assert out.loss.dtype == torch.float32 and out.aux_loss.dtype == torch.float32
    assert (out.logits.float() - ref.logits).abs().max() < 0.05 * ref.logits.abs().max()
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-2)
    (out.loss + out.aux_loss).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n


# ---- balancing ----------------------------------------------------------------------------

def _skewed_input_and_moe(**kw):
    """Every token prefers expert 0: inputs share a direction c that only router row 0 reads."""
    moe = _moe(num_experts=4, top_k=1, balance="aux_free", bias_update_rate=0.02, **kw)
    g = torch.Generator().manual_seed(5)
    c = torch.zeros(32)
    c[0] = 3.0
    with torch.no_grad():
        moe.router.weight.mul_(10.0)  # varied per-token preferences among the other experts
        moe.router.weight[:, 0] = 0.0
        moe.router.weight[0, 0] = 0.5
    x = torch.randn(1, 64, 32, generator=g) * 0.3 + c
    return moe, x


def _imbalance(moe, x) -> float:
    """A training forward as the training step makes it: the routing is recorded towards the bias."""
    with torch.no_grad():
        _, _, stats = moe(x)
    moe.record_load(stats)
    return stats["imbalance"].item()


def test_aux_free_bias_moves_toward_balance():
    moe, x = _skewed_input_and_moe()
    assert _imbalance(moe, x) > 3.5  # nearly all 64 tokens on expert 0 of 4
    moe.update_router_bias()
    # Overloaded expert 0 goes down by the rate, the idle ones go up by it.
    torch.testing.assert_close(moe.router.bias, torch.tensor([-0.02, 0.02, 0.02, 0.02]))
    assert moe.load.sum() == 0
    for _ in range(40):
        _imbalance(moe, x)
        moe.update_router_bias()
    assert _imbalance(moe, x) < 1.5
    # The bias only decides *which* experts: gates are still the unbiased softmax probs.
    r = moe.router(x.view(-1, 32))
    torch.testing.assert_close(r.weights, r.probs.gather(-1, r.expert_idx))


def test_aux_free_bias_unchanged_by_eval_forwards():
    """The forward changes no state; only the training step records routing (train_step ->
    Transformer.record_load), so evaluation (training/loop.py evaluate) never moves the bias."""
    from contextlib import nullcontext

    from lrscale.training.loop import evaluate

    moe, x = _skewed_input_and_moe()
    _imbalance(moe, x)                       # training forward, recorded: load accumulates
    load = moe.load.clone()
    assert load.sum() == 64 and load[0] > 60
    with torch.no_grad():
        moe(x)                               # a bare forward records nothing
    assert torch.equal(moe.load, load)
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=64, seq_len=8,
                      moe=MoEConfig(num_experts=4, top_k=1, balance="aux_free"))
    model = build_model(cfg)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    evaluate(model, [(idx, idx)] * 3, torch.device("cpu"), nullcontext())
    assert model.moe_layers()[0].load.sum() == 0   # evaluation forwards add nothing
    moe.update_router_bias()
    bias = moe.router.bias.clone()
    with torch.no_grad():
        moe(x)
    moe.update_router_bias()                 # nothing recorded since: nothing to act on
    assert torch.equal(moe.router.bias, bias)


def test_aux_loss_mode_never_moves_bias():
    moe = _moe(num_experts=4, top_k=1, balance="aux_loss")
    moe(torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0)))
    moe.update_router_bias()
    assert moe.router.bias.abs().sum() == 0


@pytest.mark.parametrize("top_k", [1, 2])
def test_switch_load_balance_loss_is_one_for_uniform_routing(top_k):
    """Token t has logit c on experts t, t+1 (mod E), 0 elsewhere: every expert gets the same
    share of assignments and the same mean probability, though each token's probs are peaked."""
    E, d = 4, 32
    moe = _moe(num_experts=E, top_k=top_k, aux_loss_coef=0.25, z_loss_coef=0.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :E] = 3.0 * torch.eye(E)
    x = torch.zeros(1, 4 * E, d)
    for t in range(4 * E):
        for j in range(top_k):
            x[0, t, (t + j) % E] = 1.0
    _, aux, stats = moe(x)
    assert stats["tokens_per_expert"].tolist() == [4 * top_k] * E
    assert moe.router(x[0]).probs.max() > 1.5 / E  # not trivially uniform per token
    torch.testing.assert_close(stats["load_balance_loss"], torch.tensor(1.0))
    torch.testing.assert_close(aux, torch.tensor(0.25))


def test_switch_load_balance_loss_hand_value_when_skewed():
    E, d = 4, 32
    moe = _moe(num_experts=E, top_k=1, aux_loss_coef=1.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :E] = 3.0 * torch.eye(E)
    x = torch.zeros(1, 8, d)
    x[0, :6, 0] = 1.0      # six tokens to expert 0
    x[0, 6:, 1] = 1.0      # two to expert 1
    _, aux, _ = moe(x)
    p_hi = math.exp(3) / (math.exp(3) + 3)
    p_lo = 1 / (math.exp(3) + 3)
    f = [6 / 8, 2 / 8, 0, 0]
    P = [(6 * p_hi + 2 * p_lo) / 8, (6 * p_lo + 2 * p_hi) / 8, p_lo, p_lo]
    expected = E * sum(fi * pi for fi, pi in zip(f, P))
    assert expected > 1.5
    assert aux.item() == pytest.approx(expected, rel=1e-5)


def test_z_loss_matches_hand_computation():
    moe = _moe(num_experts=4, top_k=2, aux_loss_coef=0.0, z_loss_coef=0.1)
    with torch.no_grad():
        moe.router.weight.mul_(50)  # make logsumexp far from log(E)
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(4))
    _, aux, stats = moe(x)
    z = 0.0
    for row in x.reshape(-1, 32).double():
        logits = [float(row @ w) for w in moe.router.weight.detach().double()]
        z += math.log(sum(math.exp(v) for v in logits)) ** 2
    z /= 16
    assert stats["router_z"].item() == pytest.approx(z, rel=1e-5)
    assert aux.item() == pytest.approx(0.1 * z, rel=1e-5)


# ---- causality ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dense", "moe", "gqa_moe"])
def test_future_token_does_not_change_past_logits(kind):
    cfg = {"dense": COUNT_CONFIGS["dense"], "moe": COUNT_CONFIGS["moe"], "gqa_moe": COUNT_CONFIGS["gqa_moe"]}[kind]
    model = build_model(cfg)
    idx = tokens(cfg, batch=1)
    t = cfg.seq_len // 2
    idx2 = idx.clone()
    idx2[0, t:] = (idx2[0, t:] + 7) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(idx).logits, model(idx2).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-3


# ---- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, field", [
    (dict(d_model=30, n_heads=4), "n_heads"),
    (dict(d_model=30, n_heads=10), "d_model/n_heads"),          # head size 3 is odd
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(moe=MoEConfig(num_experts=4, top_k=5)), "top_k"),
    (dict(moe=MoEConfig(num_experts=4, top_k=0)), "top_k"),
    (dict(moe=MoEConfig(num_experts=4, balance="sinkhorn")), "balance"),
    (dict(moe=MoEConfig(num_experts=4, first_dense_layers=2)), "first_dense_layers"),
    (dict(moe=MoEConfig(num_experts=-1)), "num_experts"),
    (dict(vocab_size=0), "vocab_size"),
])
def test_invalid_config_rejected_naming_field(kw, field):
    with pytest.raises(ValueError, match=field) as e:
        tiny_model_config(**kw)
    if field == "balance":
        assert "aux_loss" in str(e.value) and "aux_free" in str(e.value)


def test_unknown_attention_backend_lists_valid():
    with pytest.raises(ValueError, match="flash9") as e:
        build_model(tiny_model_config(), attn="flash9")
    assert "eager" in str(e.value) and "sdpa" in str(e.value)


def test_unknown_expert_backend_lists_valid():
    with pytest.raises(ValueError, match="scattermoe") as e:
        build_model(tiny_model_config(moe=MoEConfig(num_experts=4)), experts="scattermoe")
    assert "loop" in str(e.value) and "grouped_mm" in str(e.value)


@pytest.mark.parametrize("d_model, d_expert, field", [(36, 16, "d_model"), (32, 20, "d_expert")])
def test_grouped_mm_misaligned_sizes_rejected(d_model, d_expert, field):
    """Grouped GEMMs need 16-byte rows: the hardware check refuses other widths before anything
    is built, naming the field and what runs instead (the grouped_mm record, models/moe.py)."""
    from lrscale.training.config import HardwareConfig
    from lrscale.training.hardware import check_kernels

    cfg = tiny_model_config(d_model=d_model, n_heads=2, moe=MoEConfig(num_experts=4, d_expert=d_expert))
    with pytest.raises(ValueError, match=f"{field}.*multiple of 8") as e:
        check_kernels(HardwareConfig(expert_backend="grouped_mm"), cfg, torch.device("cpu"))
    assert "loop" in str(e.value)
    check_kernels(HardwareConfig(expert_backend="loop"), cfg, torch.device("cpu"))
    build_model(cfg, experts="loop")  # the reference accepts any size


# ---- fast paths of the training step against their references (issue #13) -----------------

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _loss_and_grads(fn, h, w, t, mult, ctx=None):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    with ctx if ctx is not None else torch.autocast("cpu", enabled=False):
        loss = fn(h, w, t, mult)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("mult", [1.0, 0.3])
@pytest.mark.parametrize("ignore", [False, True])
def test_chunked_loss_matches_reference_fp32(mult, ignore):
    """Loss and both gradients of the chunked kernel against the reference (and both against
    fp64), over several chunks with a ragged last one, with ignored targets and a multiplier."""
    from lrscale.models.loss import IGNORE_INDEX, chunked_lm_loss, reference_lm_loss
    g = torch.Generator().manual_seed(0)
    N, d, V = 150, 32, 97
    h, w = torch.randn(N, d, generator=g), torch.randn(V, d, generator=g) * 0.3
    t = torch.randint(0, V, (N,), generator=g)
    if ignore:
        t[::7] = IGNORE_INDEX
    ref = _loss_and_grads(reference_lm_loss, h, w, t, mult)
    exact = _loss_and_grads(reference_lm_loss, h.double(), w.double(), t, mult)
    for rows in (None, 1, 64, N):  # default, one row, ragged chunks, one chunk
        out = _loss_and_grads(lambda *a: chunked_lm_loss(*a, chunk_rows=rows), h, w, t, mult)
        for a, b, e in zip(out, ref, exact):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert _rel(a, b) < 1e-6
            assert _rel(a, e) <= 2 * _rel(b, e) + 3e-7  # no less exact than the reference (+ 2 ulp)
    if ignore:  # an ignored row contributes nothing, to the loss or to its own gradient
        assert (out[1][::7] == 0).all()


@pytest.mark.parametrize("mult", [1.0, 0.3])
def test_chunked_loss_bf16_autocast_within_bf16_of_fp64(mult):
    """Under bf16 autocast both kernels round the logits and their gradient to bf16 (the
    matmul's dtype) and do the softmax in fp32; both land as close to fp64 as bf16 allows."""
    from lrscale.models.loss import chunked_lm_loss, reference_lm_loss
    g = torch.Generator().manual_seed(1)
    N, d, V = 96, 32, 80
    h, w = torch.randn(N, d, generator=g), torch.randn(V, d, generator=g) * 0.3
    t = torch.randint(0, V, (N,), generator=g)
    exact = _loss_and_grads(reference_lm_loss, h.double(), w.double(), t, mult)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    ref = _loss_and_grads(reference_lm_loss, h, w, t, mult, bf16)
    out = _loss_and_grads(lambda *a: chunked_lm_loss(*a, chunk_rows=32), h, w, t, mult, bf16)
    assert out[0].dtype == torch.float32 and out[1].dtype == out[2].dtype == torch.float32
    assert _rel(out[0], exact[0]) < 1e-3 and _rel(ref[0], exact[0]) < 1e-3
    for a, b, e in zip(out[1:], ref[1:], exact[1:]):
        assert 1e-4 < _rel(a, e) < 1e-2  # really computed in bf16, and no worse than bf16
        assert _rel(a, e) <= 1.5 * _rel(b, e)


def test_chunked_loss_without_grad_equals_with_grad():
    from lrscale.models.loss import chunked_lm_loss
    g = torch.Generator().manual_seed(2)
    h, w = torch.randn(40, 16, generator=g), torch.randn(30, 16, generator=g)
    t = torch.randint(0, 30, (40,), generator=g)
    with torch.no_grad():
        a = chunked_lm_loss(h, w, t, 0.5, chunk_rows=16)
    b = chunked_lm_loss(h.requires_grad_(), w, t, 0.5, chunk_rows=16)
    assert torch.equal(a, b.detach()) and b.requires_grad


def test_chunked_loss_makes_no_gradients_under_no_grad():
    """Evaluation (no_grad, parameters that require grad) runs the logits matmuls only."""
    from torch.utils.flop_counter import FlopCounterMode

    from lrscale.models.loss import chunked_lm_loss
    N, d, V = 64, 16, 48
    h, w = torch.randn(N, d), torch.randn(V, d, requires_grad=True)
    t = torch.randint(0, V, (N,))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        loss = chunked_lm_loss(h, w, t, 1.0, chunk_rows=16)
    assert fc.get_total_flops() == 2 * N * d * V and not loss.requires_grad
    with FlopCounterMode(display=False) as fc:  # training (the in-place addmm_ is not counted)
        chunked_lm_loss(h.requires_grad_(), w, t, 1.0, chunk_rows=16)
    assert fc.get_total_flops() > 2 * N * d * V


def test_default_chunk_rows():
    from lrscale.models.loss import default_chunk_rows
    assert default_chunk_rows(2048, 128, 4096) == 128           # CPU presets: 2 MB of fp32 logits
    assert default_chunk_rows(32768, 2048, 32000) == 4096       # GPU: logits chunk >= h itself
    assert default_chunk_rows(10, 32, 64) == 10                 # never more rows than there are
    assert bin(default_chunk_rows(1000, 64, 50000)).count("1") == 1


@pytest.mark.parametrize("cfg_name", ["dense", "moe", "gqa_moe"])
@pytest.mark.parametrize("pname", ["sp", "mup"])
def test_model_chunked_loss_matches_reference_loss(cfg_name, pname):
    """Whole model, fp32: the default (chunked) loss against the reference loss backend, every
    parameter's gradient; logits read from the output equal the reference's."""
    cfg = COUNT_CONFIGS[cfg_name]
    kw = dict(name="mup", base_d_model=16) if pname == "mup" else {}
    idx, y = tokens(cfg), tokens(cfg, seed=2)
    res = []
    for loss_backend in ("reference", "chunked"):
        param = build_parametrization(ParametrizationConfig(**kw), cfg)
        model = Transformer(cfg, param, "eager", "loop", loss_backend)
        init_weights(model, param, 0)
        out = model(idx, y)
        (out.loss + out.aux_loss).backward()
        res.append((out.loss.detach(), out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert pname == "sp" or model.output_mult != 1.0
    assert _rel(res[1][0], res[0][0]) < 1e-6
    assert torch.equal(res[1][1], res[0][1])
    for n in res[0][2]:
        assert _rel(res[1][2][n], res[0][2][n]) < 1e-5, n


def test_lazy_logits_follow_forward_autocast_and_refuse_changed_weights():
    cfg = COUNT_CONFIGS["dense"]
    model, idx = build_model(cfg), tokens(cfg)
    with torch.no_grad():
        plain = model(idx).logits                           # no targets: logits made eagerly
    out = model(idx, idx)
    assert torch.equal(out.logits, plain) and out.logits.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, idx)
    assert out.logits.dtype == torch.bfloat16               # replayed under the forward's autocast
    with torch.no_grad():
        out = model(idx, idx)
        model.unembed.weight.add_(1.0)                      # an optimizer step, say
    with pytest.raises(RuntimeError, match="weight changed"):
        out.logits


def test_unit_multipliers_cost_no_pass_and_change_nothing():
    from lrscale.models.transformer import _scaled
    x = torch.randn(4, 8)
    assert _scaled(x, 1.0) is x and torch.equal(x * 1.0, x)
    assert torch.equal(_scaled(x, 0.5), x * 0.5)


@pytest.mark.parametrize("n_q, n_kv, dtype", [(4, 4, torch.float32), (4, 2, torch.float32), (4, 1, torch.bfloat16)])
def test_rotary_split_heads_is_the_reference_bit_for_bit(n_q, n_kv, dtype):
    """The fused split + rotation of q and k, forward and backward, against splitting the
    projection and calling the reference Rotary.forward on q and k."""
    from lrscale.models.layers import Rotary
    B, T, hs = 2, 12, 8
    rot = Rotary(hs, 16, 10000.0)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(B, T, (n_q + 2 * n_kv) * hs, generator=g).to(dtype)
    grads = [torch.randn(B, n, T, hs, generator=g).to(dtype) for n in (n_q, n_kv, n_kv)]
    res = []
    for fast in (False, True):
        x = base.clone().requires_grad_()
        qkv = x.view(B, T, n_q + 2 * n_kv, hs)
        if fast:
            q, k, v = rot.split_heads(qkv, n_q, n_kv)
        else:
            q, k, v = qkv.transpose(1, 2).split([n_q, n_kv, n_kv], dim=1)
            q, k = rot(q), rot(k)
        torch.autograd.backward([q, k, v], grads)
        res.append((q.detach(), k.detach(), v.detach(), x.grad))
    for a, b in zip(*res):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_gate_is_the_reference_bit_for_bit(dtype):
    from lrscale.models.layers import silu_gate, swiglu_reference
    g = torch.Generator().manual_seed(0)
    base, dy = torch.randn(3, 5, 16, generator=g).to(dtype), torch.randn(3, 5, 8, generator=g).to(dtype)
    res = []
    for fn in (swiglu_reference, silu_gate):
        h = base.clone().requires_grad_()
        y = fn(h)
        y.backward(dy)
        res.append((y.detach(), h.grad))
    assert torch.equal(res[1][0], res[0][0]) and torch.equal(res[1][1], res[0][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_closed_form_backward_matches_reference(dtype):
    """Forward identical to the reference; gradients within fp32 rounding of autograd's."""
    from lrscale.models.layers import RMSNorm, rms_norm_reference
    norm = RMSNorm(32, 1e-5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(32, generator=g) + 0.5)
    base, dy = torch.randn(3, 7, 32, generator=g).to(dtype), torch.randn(3, 7, 32, generator=g).to(dtype)
    res = []
    for fn in (lambda x: rms_norm_reference(x, norm.weight, norm.eps), norm):
        x = base.clone().requires_grad_()
        norm.weight.grad = None
        y = fn(x)
        y.backward(dy)
        res.append((y.detach(), x.grad, norm.weight.grad))
    assert res[1][0].dtype == dtype and torch.equal(res[1][0], res[0][0])
    assert _rel(res[1][1], res[0][1]) < 1e-6 and _rel(res[1][2], res[0][2]) < 1e-6


def test_grouped_mm_on_cpu_runs_unpadded_by_default():
    """No alignment padding on the CPU (its grouped GEMM needs none): same bits as align=1."""
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([5, 0, 9, 2])
    x, w_in = torch.randn(16, 16, generator=g), torch.randn(4, 16, 16, generator=g)
    w_out = torch.randn(4, 8, 16, generator=g)
    assert torch.equal(grouped_mm_experts(x, counts, w_in, w_out), grouped_mm_experts(x, counts, w_in, w_out, align=1))
