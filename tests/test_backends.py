"""Fast paths against their references: attention backends, expert kernels (with the
grouped-GEMM padding), bf16 autocast dtypes, activation checkpointing, compile, and the
throughput benchmark's plumbing.

CPU tests run by default on tiny shapes. GPU twins carry @pytest.mark.gpu, skip cleanly
without CUDA and assert they really ran there (`run with: pytest -m gpu`). Tolerances
follow /work/.library/device/METHOD.md: relative error norms ||out - ref|| / ||ref||,
fp32 far under 1e-3, bf16 operands between 1e-3 and 1e-2, against an fp32/fp64 reference.
"""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from conftest import build_model, tiny_model_config
from lrscale.benchmarks import throughput
from lrscale.models import ModelConfig, MoEConfig, Transformer
from lrscale.models.attention import ATTENTION_KERNELS, eager_attention
from lrscale.models.kernels import BackendUnavailableError, lookup
from lrscale.models.moe import EXPERT_KERNELS, grouped_mm_experts, loop_experts, padded_group_layout
from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights
from lrscale.training.config import HardwareConfig
from lrscale.training.hardware import apply_compile, autocast

HAS_CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all()
    return float((out - ref).norm() / ref.norm())



def fwd_bwd(model: Transformer, idx: torch.Tensor, ctx=None) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    with ctx if ctx is not None else torch.autocast("cpu", enabled=False):
        out = model(idx, idx)
        loss = out.loss + out.aux_loss
    loss.backward()
    model.record_load(out.moe_stats)  # as train_step does: the routing counts towards the bias
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def qkv(B=2, H=4, H_kv=4, T=16, D=16, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g)
    k = torch.randn(B, H_kv, T, D, device=device, dtype=dtype, generator=g)
    v = torch.randn(B, H_kv, T, D, device=device, dtype=dtype, generator=g)
    return q, k, v


def attention_fwd_bwd(fn, q, k, v, scale, dy):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    y = fn(*leaves, scale)
    (y.float() * dy).sum().backward()
    return y.detach(), [t.grad for t in leaves]


# ---- attention: CPU ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sdpa", "sdpa_flash"])
@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_attention_backend_matches_eager_fwd_bwd_cpu_fp32(backend, n_kv):
    """sdpa_flash on CPU runs PyTorch's CPU flash kernel: the pinning wrapper itself is checked here."""
    q, k, v = qkv(H_kv=n_kv)
    dy = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = attention_fwd_bwd(eager_attention, q, k, v, 0.3, dy)
    y, g = attention_fwd_bwd(ATTENTION_KERNELS[backend].fn, q, k, v, 0.3, dy)
    assert rel_err(y, y_ref) < 1e-5
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 1e-5


def test_sdpa_model_matches_eager_model_gqa_fwd_bwd():
    cfg = tiny_model_config(d_model=64, n_heads=4, n_kv_heads=2)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    res = []
    for backend in ("eager", "sdpa"):
        model = build_model(cfg, attn=backend)
        out = model(idx, idx)
        out.loss.backward()
        res.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-5, atol=1e-5)
    for n in res[0][1]:
        torch.testing.assert_close(res[1][1][n], res[0][1][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.skipif(has("flash_attn"), reason="flash_attn is installed here")
def test_flash_attn_without_package_fails_saying_how_to_install():
    with pytest.raises(BackendUnavailableError, match="pip install flash-attn"):
        lookup(ATTENTION_KERNELS, "attention", "flash_attn")
    with pytest.raises(BackendUnavailableError, match="flash_attn"):
        build_model(tiny_model_config(), attn="flash_attn")


# ---- experts: CPU -----------------------------------------------------------------------

COUNTS = [[7, 0, 9, 4], [0, 12, 8, 0], [20, 0, 0, 0], [1, 1, 1, 17], [8, 8, 8, 8]]


def expert_inputs(counts, d=16, de=8, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    E, n = len(counts), sum(counts)
    x = torch.randn(n, d, device=device, generator=g)
    w_in = torch.randn(E, d, 2 * de, device=device, generator=g) / math.sqrt(d)
    w_out = torch.randn(E, de, d, device=device, generator=g) / math.sqrt(de)
    dy = torch.randn(n, d, device=device, generator=g)
    return x, w_in, w_out, dy, torch.tensor(counts, device=device)


def experts_fwd_bwd(fn, x, w_in, w_out, dy, c, ctx=None, **kw):
    leaves = [t.clone().requires_grad_() for t in (x, w_in, w_out)]
    with ctx if ctx is not None else torch.autocast(x.device.type, enabled=False):
        y = fn(leaves[0], c, leaves[1], leaves[2], **kw)
    (y.float() * dy).sum().backward()
    return y.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("counts", COUNTS)
def test_padded_group_layout_aligns_every_group_and_keeps_rows_in_their_expert(counts):
    c, n, align = torch.tensor(counts), sum(counts), 8
    dest, offs, n_pad = padded_group_layout(c, n, align)
    starts = torch.cat([offs.new_zeros(1), offs[:-1]])
    assert n_pad % align == 0 and offs[-1] == n_pad and n_pad >= n
    assert (starts % align == 0).all() and (offs - starts >= align).all()  # aligned, none empty
    assert dest.unique().numel() == n and (dest < n_pad).all()             # injective, in bounds
    expert_of_row = torch.repeat_interleave(torch.arange(len(counts)), c)
    assert ((dest >= starts[expert_of_row]) & (dest < offs[expert_of_row])).all()


@pytest.mark.parametrize("align", [None, 1, 3, 8])
@pytest.mark.parametrize("counts", COUNTS)
def test_grouped_mm_matches_loop_fwd_bwd_fp32(counts, align):
    x, w_in, w_out, dy, c = expert_inputs(counts)
    y_ref, g_ref = experts_fwd_bwd(loop_experts, x, w_in, w_out, dy, c)
    y, g = experts_fwd_bwd(grouped_mm_experts, x, w_in, w_out, dy, c, align=align)
    assert rel_err(y, y_ref) < 1e-6
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 1e-6
    for e, ne in enumerate(counts):  # an expert without tokens gets exactly zero gradient
        if ne == 0:
            assert g[1][e].abs().max() == 0 and g[2][e].abs().max() == 0
            assert g_ref[1][e].abs().max() == 0 and g_ref[2][e].abs().max() == 0
    start = 0  # and the loop reference is what it claims: expert e applied to its own slice
    for e, ne in enumerate(counts):
        gate, up = (x[start:start + ne] @ w_in[e]).chunk(2, -1)
        torch.testing.assert_close(y_ref[start:start + ne], (torch.nn.functional.silu(gate) * up) @ w_out[e])
        start += ne


@pytest.mark.parametrize("counts", COUNTS[:3])
def test_grouped_mm_bf16_autocast_matches_fp64_reference_cpu(counts):
    """Under bf16 autocast both kernels run their GEMMs in bf16 (grouped_mm casts itself:
    no autocast list covers it); both land within bf16 tolerance of the fp64 loop."""
    x, w_in, w_out, dy, c = expert_inputs(counts, d=32, de=16)
    y64, g64 = experts_fwd_bwd(loop_experts, *(t.double() for t in (x, w_in, w_out, dy)), c)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    for fn in (loop_experts, grouped_mm_experts):
        y, g = experts_fwd_bwd(fn, x, w_in, w_out, dy, c, ctx=bf16)
        assert y.dtype == torch.bfloat16
        assert 1e-4 < rel_err(y, y64) < 1e-2  # really computed in bf16, and no worse than bf16
        for a, b in zip(g, g64):
            assert a.dtype == torch.float32  # gradients reach the fp32 master weights
            assert rel_err(a, b) < 2e-2


@pytest.mark.skipif(has("grouped_gemm"), reason="grouped_gemm is installed here")
def test_megablocks_without_package_fails_saying_how_to_install():
    with pytest.raises(BackendUnavailableError, match="pip install megablocks"):
        lookup(EXPERT_KERNELS, "expert", "megablocks")


@pytest.mark.parametrize("moe", [
    MoEConfig(num_experts=4, top_k=2, d_expert=16, shared_expert=True, z_loss_coef=1e-3),
    MoEConfig(num_experts=32, top_k=1, d_expert=16),   # top-1 of 32 on 16 tokens: most experts get nothing
])
def test_moe_model_grouped_mm_matches_loop_fwd_bwd(moe):
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=64, seq_len=8, moe=moe)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    ref_model, model = build_model(cfg, experts="loop"), build_model(cfg, experts="grouped_mm")
    out_ref, out = ref_model(idx, idx), model(idx, idx)
    torch.testing.assert_close(out.logits, out_ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.aux_loss, out_ref.aux_loss)
    loss_ref, g_ref = fwd_bwd(ref_model, idx)
    loss, g = fwd_bwd(model, idx)
    if moe.num_experts == 32:
        assert (ref_model.moe_layers()[0].load == 0).any()  # empty experts really occurred
    torch.testing.assert_close(loss, loss_ref)
    for n in g_ref:
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


# ---- bf16 autocast: what stays fp32 -------------------------------------------------------

def test_bf16_autocast_keeps_router_loss_and_master_weights_fp32():
    model = build_model(tiny_model_config(moe=True), attn="sdpa", experts="grouped_mm")
    seen = {}
    model.blocks[0].moe.router.register_forward_hook(lambda m, i, out: seen.update(router=out.logits.dtype))
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with autocast(HardwareConfig(dtype="bfloat16"), torch.device("cpu")):
        out = model(idx, idx)
    assert out.logits.dtype == torch.bfloat16       # the unembedding matmul ran in bf16
    assert out.loss.dtype == torch.float32          # cross-entropy on logits.float()
    assert out.aux_loss.dtype == torch.float32
    assert seen["router"] == torch.float32          # router matmul and softmax in fp32
    (out.loss + out.aux_loss).backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


# ---- activation checkpointing and compile ---------------------------------------------------

@pytest.mark.parametrize("moe", [False, True])
def test_activation_checkpointing_gives_identical_grads(moe):
    cfg = tiny_model_config(moe=moe)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    ref, ckpt = build_model(cfg, attn="sdpa", experts="grouped_mm"), build_model(cfg, attn="sdpa", experts="grouped_mm")
    apply_compile(ckpt, HardwareConfig(activation_checkpointing=True))
    loss_ref, g_ref = fwd_bwd(ref, idx)
    loss, g = fwd_bwd(ckpt, idx)
    assert list(g) == list(g_ref)  # parameter names unchanged by the wrapper
    assert torch.equal(loss, loss_ref)
    for n in g_ref:
        assert torch.equal(g[n], g_ref[n]), n
    if moe:  # the forward is pure, so recomputing it in backward counts no routing twice
        for a, b in zip(ckpt.moe_layers(), ref.moe_layers()):
            assert torch.equal(a.load, b.load) and a.load.sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("moe", [False, True])
def test_compiled_blocks_match_eager_cpu(moe):
    """torch.compile per block on CPU (slow: ~30 s of inductor compilation per graph)."""
    cfg = tiny_model_config(moe=moe)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    ref, comp = build_model(cfg, attn="sdpa", experts="grouped_mm"), build_model(cfg, attn="sdpa", experts="grouped_mm")
    apply_compile(comp, HardwareConfig(compile=True))
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)  # grouped_mm traces in bf16 only
    loss_ref, g_ref = fwd_bwd(ref, idx, bf16)
    loss, g = fwd_bwd(comp, idx, bf16)
    assert abs(float(loss - loss_ref)) < 1e-2 * float(loss_ref)
    for n in g_ref:
        assert rel_err(g[n], g_ref[n]) < 5e-2, n


# ---- the benchmark's plumbing -----------------------------------------------------------

def test_throughput_cpu_suite_tiny_writes_interleaved_json(tmp_path, capsys):
    """The CPU suite's plumbing on tiny shapes (its numbers mean nothing at this size): one
    process, every case in every round, rates from thread CPU time, per-round ratios, and
    the verdicts are explicit (ok or invalid with a reason), never a silent number."""
    out = tmp_path / "bench.json"
    assert throughput.main(["--tiny", "--suite", "cpu", "--allocator", "default", "--rounds", "2", "--steps", "1",
                            "--warmup", "0", "--references", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["threads"] == 1 and data["meta"]["rounds"] == 2
    phase = data["phases"]["default"]
    assert not phase["allocator"]["applied"]
    assert len(phase["peak"]["per_round"]) == 2 and phase["peak"]["median"] > 0
    rows = {r["name"]: r for r in phase["cases"]}
    ours = {"dense_tiny/sdpa", "dense_tiny/eager+reference_loss", "moe_tiny/sdpa+grouped_mm",
            "moe_tiny/eager+loop+reference_loss"}
    assert ours | {"dense_tiny/nanogpt"} <= set(rows)
    for name, r in rows.items():
        if r["impl"] == "transformers" and not has("transformers"):
            assert r["status"] == "skipped" and "transformers not installed" in r["error"]
            continue
        assert r["status"] in ("ok", "invalid"), r
        assert (r["status"] == "invalid") == bool(r["reason"])
        rate = r["tokens_per_cpu_s"]
        assert len(rate["per_round"]) == 2 and rate["min"] <= rate["median"] <= rate["max"]
        assert rate["spread"] == pytest.approx((rate["max"] - rate["min"]) / rate["median"])
        assert r["faults_per_step"] >= 0 and 0 <= r["sys_fraction"] <= 1 and r["mfu"]["median"] > 0
    assert rows["moe_tiny/transformers/sdpa"].get("experts_implementation", "grouped_mm") == "grouped_mm"
    if has("transformers"):
        assert rows["moe_tiny/transformers/sdpa"]["grouped_mm_calls_per_step"] > 0  # its fast path ran
    pairs = {(e["ours"], e["other"]): e for e in phase["ratios"]}
    e = pairs[("dense_tiny/sdpa", "dense_tiny/nanogpt")]
    a, b = rows["dense_tiny/sdpa"], rows["dense_tiny/nanogpt"]
    per_round = [x / y for x, y in zip(a["tokens_per_cpu_s"]["per_round"], b["tokens_per_cpu_s"]["per_round"])]
    assert e["cpu_time"]["per_round"] == pytest.approx(per_round)
    assert e["peer"] and e["target"]["status"] in ("met", "missed", "invalid")
    assert not pairs[("dense_tiny/sdpa", "dense_tiny/eager+reference_loss")]["peer"]
    printed = capsys.readouterr().out
    assert "tokens/CPU-s" in printed and "load average" in printed


def test_throughput_cpu_suite_marks_spread_and_impossible_mfu_invalid():
    """A case whose rounds disagree beyond the limit, or whose MFU exceeds 100%, is INVALID."""
    case = throughput.shrink(throughput.cpu_cases()[0], "cpu", False)
    cfg = throughput._model_config(case)
    tokens = case.batch_size * cfg.seq_len
    flops = cfg.flops_per_token() * tokens
    steady = {"cpu_s": [1.0, 1.02, 0.99], "wall_s": [1.0] * 3, "user_s": [1.0] * 3, "sys_s": [0.0] * 3,
              "faults": [0] * 3}
    peaks = [2 * flops / 1e12] * 3  # the peak is twice the achieved rate: MFU 50%
    res = throughput.summarize_phase([case], {case.name: {}}, {case.name: steady}, peaks, 1, 0.10)
    assert res["cases"][0]["status"] == "ok" and res["cases"][0]["mfu"]["median"] == pytest.approx(0.5, rel=0.05)
    jumpy = {**steady, "cpu_s": [1.0, 1.3, 1.0]}
    res = throughput.summarize_phase([case], {case.name: {}}, {case.name: jumpy}, peaks, 1, 0.10)
    assert res["cases"][0]["status"] == "invalid" and "spread" in res["cases"][0]["reason"]
    res = throughput.summarize_phase([case], {case.name: {}}, {case.name: steady}, [p / 4 for p in peaks], 1, 0.10)
    assert res["cases"][0]["status"] == "invalid" and "MFU" in res["cases"][0]["reason"]


def test_throughput_gpu_suite_plumbing_on_cpu_skips_what_needs_cuda(tmp_path):
    out = tmp_path / "bench.json"
    throughput.main(["--suite", "gpu", "--tiny", "--device", "cpu", "--no-compile", "--no-isolate",
                     "--steps", "1", "--warmup", "0", "--filter", r"^(dense_125m/sdpa|moe_1b/sdpa\+grouped_mm)",
                     "--out", str(out)])
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["dense_125m/sdpa"]["status"] == "ok" and rows["moe_1b/sdpa+grouped_mm"]["status"] == "ok"
    for name in ("dense_125m/sdpa_flash", "dense_125m/sdpa_cudnn"):
        assert rows[name]["status"] == "skipped" and "CUDA" in rows[name]["error"]
    assert set(throughput.gpu_cases()[0].model) >= {"d_model", "n_layers", "n_heads", "seq_len", "vocab_size"}
    assert {c.model["seq_len"] for c in throughput.gpu_cases()} == {2048}


# ---- GPU twins (pytest -m gpu) --------------------------------------------------------------

def _cuda_attention_backends() -> list[str]:
    return [b for b in ("sdpa", "sdpa_flash", "sdpa_cudnn", "flash_attn") if b != "flash_attn" or has("flash_attn")]


@pytest.mark.parametrize("d_head", [64, 128])
@pytest.mark.parametrize("n_kv", [8, 2])
@pytest.mark.parametrize("backend", _cuda_attention_backends())
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_attention_backend_matches_fp32_eager_bf16(backend, n_kv, d_head):
    q, k, v = qkv(B=2, H=8, H_kv=n_kv, T=256, D=d_head, device="cuda", dtype=torch.bfloat16, seed=3)
    dy = torch.randn(2, 8, 256, d_head, device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    scale = 1 / d_head  # muP-style 1/d scale: the parametrization's, never the kernel's default
    y_ref, g_ref = attention_fwd_bwd(eager_attention, q.float(), k.float(), v.float(), scale, dy)
    y, g = attention_fwd_bwd(lookup(ATTENTION_KERNELS, "attention", backend).fn, q, k, v, scale, dy)
    assert y.is_cuda and y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 2e-2


@pytest.mark.parametrize("counts", [[300, 0, 17, 195], [1, 2, 3, 506], [128, 128, 128, 128]])
@pytest.mark.parametrize("backend", ["grouped_mm"] + (["megablocks"] if has("grouped_gemm") else []))
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_expert_backend_matches_fp32_loop_bf16(backend, counts):
    x, w_in, w_out, dy, c = expert_inputs(counts, d=256, de=512, device="cuda")
    y_ref, g_ref = experts_fwd_bwd(loop_experts, x, w_in, w_out, dy, c)
    fn = lookup(EXPERT_KERNELS, "expert", backend).fn
    y, g = experts_fwd_bwd(fn, x, w_in, w_out, dy, c, ctx=torch.autocast("cuda", dtype=torch.bfloat16))
    assert y.is_cuda and y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 2e-2
    for e, ne in enumerate(counts):
        if ne == 0:
            assert g[1][e].abs().max() == 0 and g[2][e].abs().max() == 0


@pytest.mark.parametrize("attn, experts, compile, ckpt", [
    ("sdpa", "grouped_mm", False, False), ("sdpa_flash", "grouped_mm", True, False),
    ("sdpa_cudnn", "grouped_mm", True, True),
])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_bf16_model_matches_fp32_reference(attn, experts, compile, ckpt):
    cfg = ModelConfig(d_model=256, n_layers=2, n_heads=4, vocab_size=512, seq_len=128,
                      moe=MoEConfig(num_experts=4, top_k=2, d_expert=256))
    idx = torch.randint(0, 512, (4, 128), generator=torch.Generator().manual_seed(0)).cuda()
    ref = build_model(cfg, attn="eager", experts="loop").cuda()
    fast = build_model(cfg, attn=attn, experts=experts).cuda()
    apply_compile(fast, HardwareConfig(compile=compile, activation_checkpointing=ckpt))
    loss_ref, g_ref = fwd_bwd(ref, idx)
    loss, g = fwd_bwd(fast, idx, torch.autocast("cuda", dtype=torch.bfloat16))
    assert loss.is_cuda
    assert abs(float(loss - loss_ref)) < 1e-2 * float(loss_ref)
    flat = lambda gs: torch.cat([gs[n].flatten() for n in sorted(gs)])  # noqa: E731
    assert rel_err(flat(g), flat(g_ref)) < 5e-2


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_throughput_benchmark_tiny(tmp_path):
    out = tmp_path / "bench.json"
    throughput.main(["--suite", "gpu", "--tiny", "--no-isolate", "--steps", "2", "--warmup", "1",
                     "--filter", r"^(dense_125m/sdpa_flash\+compile|moe_1b/sdpa\+grouped_mm\+compile)$",
                     "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 and all(r["status"] == "ok" and r["device"] == "cuda" for r in rows), rows
