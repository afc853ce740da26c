"""Training probes (training/probes.py): the names they log, that the attention logits they
report are the ones attention uses, that relative updates measure the step, that probing
never changes training, and the stability summary (spike counts, maxima, finals)."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import train
from conftest import build_model
from lrscale.models import ModelConfig, MoEConfig, Transformer
from lrscale.parametrization import ParametrizationConfig, Role, build_parametrization, init_weights
from lrscale.training.io import read_jsonl
from lrscale.training.probes import (
    attention_logits, block_activations, count_spikes, relative_updates, run_probes, snapshot_weights,
    summarize_probes,
)

CTX = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext())


def tiny_model(moe: bool = True, name: str = "mup", d_model: int = 64):
    cfg = ModelConfig(d_model=d_model, n_layers=2, n_heads=2, vocab_size=64, seq_len=16,
                      moe=MoEConfig(num_experts=4, top_k=2, first_dense_layers=1) if moe else MoEConfig())
    return build_model(cfg, name, base_d_model=32, attn="eager", experts="loop")


def batch(B: int = 3, T: int = 16) -> torch.Tensor:
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(1))


def test_probe_row_names_every_module_role_and_stability_metric():
    model = tiny_model()
    x = batch()
    before = snapshot_weights(model)
    out = model(x, torch.roll(x, -1, 1))
    out.loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * p.grad.sign())
    row = run_probes(model, x, CTX, before)
    expected = {"probe/act_rms/embed", "probe/logit_rms", "probe/max_attn_logit", "probe/attn_logit_rms"}
    for i in range(2):
        expected |= {f"probe/act_rms/block{i}", f"probe/act_rms/block{i}/attn", f"probe/act_rms/block{i}/ffn"}
    roles = {r.value for r in Role}
    expected |= {f"probe/update_rel/{r}" for r in roles} | {f"probe/grad_norm/{r}" for r in roles}
    assert set(row) == expected
    assert all(math.isfinite(v) and v >= 0 for k, v in row.items() if k != "probe/max_attn_logit")
    assert row["probe/max_attn_logit"] >= row["probe/attn_logit_rms"] > 0
    assert model.training  # restored after the eval-mode probe forward


def test_attention_logits_are_the_ones_attention_uses():
    """Softmax of the probed logits, applied to v and w_o, reproduces the attention branch."""
    model = tiny_model()
    block, x = model.blocks[0], batch()
    with torch.no_grad():
        h = F.embedding(x, model.embed) * model.input_mult
        flat = attention_logits(block, h)                             # (B, nh, T(T+1)/2)
        B, T = x.shape
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        full = torch.full((B, flat.shape[1], T, T), -math.inf)
        full[..., causal] = flat
        _, _, v = block.attn.qkv(block.attn_norm(h))
        y = (full.softmax(-1) @ v.float()).transpose(1, 2).reshape(B, T, -1)
        torch.testing.assert_close(block.attn.wo(y), block.attn(block.attn_norm(h)), rtol=1e-5, atol=1e-6)


def test_row_chunked_walk_equals_whole_batch_forward():
    model = tiny_model().eval()
    x = batch(B=3)
    acts = block_activations(model, x)
    with torch.no_grad():
        logits = model(x).logits
    torch.testing.assert_close(acts["logits"], logits.float())
    assert acts["attn_logits0"].shape[0] == 3  # three per-row pieces joined back


def test_relative_update_measures_the_change_per_role():
    model = tiny_model(moe=False)
    before = snapshot_weights(model)
    with torch.no_grad():
        model.unembed.weight.mul_(1.5)        # ||dW|| / ||W|| = 0.5 exactly
    rel = relative_updates(model, before)
    assert rel["unembedding"] == pytest.approx(0.5, rel=1e-6)
    assert rel["attn_qkv"] == 0.0 and rel["embedding"] == 0.0


def test_count_spikes():
    smooth = [5.0 - 0.01 * i + 0.002 * (-1) ** i for i in range(60)]
    assert count_spikes(smooth) == 0
    spiky = list(smooth)
    spiky[40] = 9.0
    assert count_spikes(spiky) == 1
    assert count_spikes(smooth[:10] + [math.nan]) == 1  # a non-finite loss is a spike


def test_summarize_probes_reads_maxima_finals_and_spikes():
    rows = [{"step": s, "train_loss": 5.0 - 0.01 * s + 0.002 * (-1) ** s, "grad_norm": 1.0 + 0.001 * s,
             "moe/imbalance": 1.5, "moe/router_z": 2.0 + s / 100, "moe/router_entropy": 1.3 - s / 1000,
             "moe/tokens_per_expert": [1, 2]} for s in range(1, 41)]
    rows[29]["train_loss"] = 12.0
    rows += [{"step": 20, "probe/max_attn_logit": 3.0, "probe/logit_rms": 1.0, "probe/update_rel/router": 0.1,
              "probe/act_rms/block0": 0.5},
             {"step": 40, "probe/max_attn_logit": 2.0, "probe/logit_rms": 1.5, "probe/update_rel/router": 0.05,
              "probe/act_rms/block0": 0.7}]
    s = summarize_probes(rows)
    assert s["loss_spikes"] == 1 and s["grad_norm_spikes"] == 0
    assert s["max_attn_logit_max"] == 3.0 and s["max_attn_logit_final"] == 2.0
    assert s["logit_rms_max"] == 1.5 and s["grad_norm_final"] == pytest.approx(1.04)
    assert s["moe_router_z_max"] == pytest.approx(2.4) and s["moe_router_entropy_min"] == pytest.approx(1.26)
    assert s["update_rel_final"] == {"router": 0.05} and s["act_rms_final"] == {"block0": 0.7}
    assert summarize_probes([]) == {}


def test_probes_are_logged_and_never_change_training(tiny, tmp_path):
    args = ("train.steps=8", "logging.log_every=1", "schedule.name=constant", "schedule.warmup_steps=0")
    plain = train.run(tiny(*args, f"run.root={tmp_path / 'a'}"))
    probed = train.run(tiny(*args, "train.probe_every=4", f"run.root={tmp_path / 'b'}"))
    rows = {k: read_jsonl(Path(s["run_dir"]) / "metrics.jsonl") for k, s in (("a", plain), ("b", probed))}
    loss = {k: [r["train_loss"] for r in v if "train_loss" in r] for k, v in rows.items()}
    assert loss["a"] == loss["b"]  # eval-mode probe forwards touch no state that training reads
    probe_rows = [r for r in rows["b"] if "probe/logit_rms" in r]
    assert [r["step"] for r in probe_rows] == [4, 8]
    assert all(r["probe/update_rel/expert_in"] > 0 for r in probe_rows)  # constant LR: every step moves
    assert not any("probe/logit_rms" in r for r in rows["a"])
    assert summarize_probes(rows["b"])["update_rel_final"]["router"] > 0


# ---- the Adam-eps and weight-decay monitors -----------------------------------------------------

def test_eps_dominance_and_wd_timescale_by_hand():
    """After one AdamW step v_hat = g^2 exactly (bias-corrected), so sqrt(v_hat) < eps exactly where
    |g| < eps: gradients of 1e-4 on half of every matrix and 1e-2 on the other half, eps = 1e-3,
    give a dominance of 1/2. tau = 1 / (lr_group * wd_group): 1 / (1e-2 * 0.5 * 0.1) = 2000 steps
    at schedule factor 0.5."""
    from lrscale.optim import GroupLR, OptimConfig, build_optimizer
    from lrscale.parametrization import param_table
    from lrscale.training.probes import optimizer_monitors

    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=64, seq_len=16)
    param = build_parametrization(ParametrizationConfig(name="sp"), cfg)
    model = Transformer(cfg, param, attn_backend="eager", expert_backend="loop")
    init_weights(model, param, seed=0)
    opt = build_optimizer(model, param_table(model, param), OptimConfig(lr=1e-2, eps=1e-3, weight_decay=0.1),
                          tokens_per_step=64, total_tokens=1e4)
    GroupLR(opt, lambda step: 0.5).apply(0)
    for p in model.parameters():
        g = torch.full_like(p, 1e-2).flatten()
        g[: g.numel() // 2] = 1e-4
        p.grad = g.view_as(p)
    opt.step()
    out = optimizer_monitors(model, opt, tokens_per_step=64)
    for role in ("embedding", "attn_qkv", "attn_out", "mlp_in", "mlp_out", "unembedding", "norm"):
        n = sum(p.numel() for n_, p in model.named_parameters() if getattr(p, "role").value == role)
        expected = sum(p.numel() // 2 for n_, p in model.named_parameters() if getattr(p, "role").value == role) / n
        assert out[f"probe/eps_dominance/{role}"] == pytest.approx(expected, abs=1e-12), role
    assert out["probe/wd_tau_steps/attn_qkv"] == pytest.approx(2000.0)
    assert out["probe/wd_tau_tokens/attn_qkv"] == pytest.approx(2000.0 * 64)
    assert "probe/wd_tau_steps/norm" not in out  # norm gains are not decayed


def test_summary_reports_eps_dominance_and_the_stable_phase_timescale():
    rows = [{"step": 10, "probe/eps_dominance/attn_qkv": 0.2, "probe/wd_tau_tokens/attn_qkv": 1000.0},
            {"step": 20, "probe/eps_dominance/attn_qkv": 0.5, "probe/wd_tau_tokens/attn_qkv": 1000.0},
            {"step": 30, "probe/eps_dominance/attn_qkv": 0.1, "probe/wd_tau_tokens/attn_qkv": 4000.0}]
    s = summarize_probes(rows)
    assert s["eps_dominance_final"] == {"attn_qkv": 0.1} and s["eps_dominance_max"] == {"attn_qkv": 0.5}
    assert s["wd_tau_tokens_min"] == {"attn_qkv": 1000.0} and s["wd_tau_tokens_final"] == {"attn_qkv": 4000.0}
