"""training/hardware.py: kernel checks before building (backend x device x dtype x shape),
autocast, the per-block wrappers, the stated peak FLOP/s and MFU, and their place in a
training run. CPU only, except the marked GPU twin."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import train
from lrscale.models import ModelConfig, MoEConfig, Transformer
from lrscale.models import ATTENTION_KERNELS, BackendUnavailableError
from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights
from lrscale.training.config import HardwareConfig
from lrscale.training.hardware import (
    apply_compile, autocast, check_kernels, mfu, nominal_peak_tflops, peak_flops, setup_torch,
)
from lrscale.training.io import read_jsonl

CPU = torch.device("cpu")


def attention_support(name: str, device: torch.device, dtype: torch.dtype, d_head: int) -> str | None:
    """Why attention kernel `name` cannot run there (its record, models/attention.py)."""
    return ATTENTION_KERNELS[name].unsupported(device, dtype, d_head=d_head)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cfg(moe: bool = True, **kw) -> ModelConfig:
    base = dict(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16)
    return ModelConfig(moe=MoEConfig(num_experts=4, top_k=2, d_expert=16) if moe else MoEConfig(), **{**base, **kw})


# ---- kernel checks ------------------------------------------------------------------------

def test_default_cpu_config_passes_checks():
    hw = HardwareConfig()  # cpu, float32, sdpa, grouped_mm
    assert setup_torch(hw, cfg()) == CPU
    check_kernels(HardwareConfig(attention_backend="eager", expert_backend="loop"), cfg(), CPU)


@pytest.mark.parametrize("backend", ["sdpa_flash", "sdpa_cudnn"])
def test_cuda_only_attention_rejected_on_cpu_listing_what_runs(backend):
    with pytest.raises(BackendUnavailableError, match="CUDA") as e:
        setup_torch(HardwareConfig(attention_backend=backend), cfg(moe=False))
    assert "eager, sdpa" in str(e.value) and backend in str(e.value)


@pytest.mark.parametrize("dtype, d_head, needle", [
    (torch.float32, 64, "bfloat16"), (torch.bfloat16, 512, "head size"), (torch.bfloat16, 60, "multiple of 8"),
])
def test_flash_rules_need_half_precision_and_head_size(monkeypatch, dtype, d_head, needle):
    """The CUDA rules themselves, with the device faked as an H100 (sm90)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    why = attention_support("sdpa_flash", torch.device("cuda"), dtype, d_head)
    assert why is not None and needle in why
    assert attention_support("sdpa_flash", torch.device("cuda"), torch.bfloat16, 128) is None


def test_old_gpu_rejected_for_fused_attention(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    why = attention_support("sdpa_cudnn", torch.device("cuda"), torch.bfloat16, 64)
    assert why is not None and "compute capability" in why


def test_compiled_grouped_mm_needs_bf16():
    with pytest.raises(BackendUnavailableError, match="bfloat16") as e:
        check_kernels(HardwareConfig(compile=True), cfg(), CPU)
    assert "loop" in str(e.value)  # names what would run
    check_kernels(HardwareConfig(compile=True, dtype="bfloat16"), cfg(), CPU)
    check_kernels(HardwareConfig(compile=True), cfg(moe=False), CPU)  # dense: no experts to check


@pytest.mark.skipif(has("grouped_gemm") or has("flash_attn"), reason="optional kernels installed here")
@pytest.mark.parametrize("field, value, install", [
    ("expert_backend", "megablocks", "pip install megablocks"),
    ("attention_backend", "flash_attn", "pip install flash-attn"),
])
def test_missing_optional_package_fails_before_building(field, value, install):
    with pytest.raises(BackendUnavailableError, match=install):
        setup_torch(HardwareConfig(**{field: value}), cfg())


def test_unknown_backend_names_still_list_valid_ones():
    with pytest.raises(ValueError, match="sdpa_cudnn"):
        setup_torch(HardwareConfig(attention_backend="flash3"))
    with pytest.raises(ValueError, match="megablocks"):
        setup_torch(HardwareConfig(expert_backend="scattermoe"))


# ---- autocast and wrappers ------------------------------------------------------------------

def test_autocast_is_off_for_fp32_and_bf16_otherwise():
    x = torch.randn(4, 4)
    with autocast(HardwareConfig(dtype="float32"), CPU):
        assert (x @ x).dtype == torch.float32
    with autocast(HardwareConfig(dtype="bfloat16"), CPU):
        assert (x @ x).dtype == torch.bfloat16


def test_activation_checkpointing_wraps_forward_without_renaming_anything():
    c = cfg()
    param = build_parametrization(ParametrizationConfig(), c)
    model = Transformer(c, param, "sdpa", "grouped_mm")
    keys = list(model.state_dict())
    apply_compile(model, HardwareConfig(activation_checkpointing=True))
    assert list(model.state_dict()) == keys
    assert all("checkpoint" in repr(b.forward) for b in model.blocks)
    plain = Transformer(c, param, "sdpa", "grouped_mm")
    apply_compile(plain, HardwareConfig())
    assert all("checkpoint" not in repr(b.forward) for b in plain.blocks)


# ---- peak FLOP/s and MFU --------------------------------------------------------------------

@pytest.mark.parametrize("name, key, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100", 989.0), ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H200", "H200", 989.0), ("NVIDIA A100-SXM4-80GB", "A100", 312.0), ("NVIDIA RTX A1000", None, None),
])
def test_nominal_peak_table(name, key, tflops):
    assert nominal_peak_tflops(name) == ((key, tflops) if key else None)


def test_cpu_peak_is_measured_fp32_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    p = peak_flops(CPU, size=128)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert p["peak_tflops"] == p["measured_tflops"] > 0
    assert p["peak_source"].startswith("measured fp32 matmul 128^3") and p["nominal_tflops"] is None


def test_mfu_is_model_flops_over_peak_per_device():
    m = mfu(tokens_per_s=1e4, flops_per_token=6e9, peak_tflops=989.0, world_size=2)
    assert m["tflops"] == pytest.approx(30.0) and m["mfu"] == pytest.approx(30.0 / 989.0)


def test_train_logs_mfu_and_states_its_peak(tiny):
    summary = train.run(tiny("train.steps=4", "logging.log_every=2", "train.eval_every=4"))
    run_dir = Path(summary["run_dir"])
    peak = json.loads((run_dir / "peak_flops.json").read_text())
    assert peak["peak_source"].startswith("measured fp32 matmul") and peak["peak_tflops"] > 0
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    assert rows and all(r["mfu"] > 0 and r["tflops"] > 0 for r in rows)
    r = rows[-1]
    assert r["tflops"] == pytest.approx(r["tokens_per_s"] * summary["flops_per_token"] / 1e12)
    assert r["mfu"] == pytest.approx(r["tflops"] / peak["peak_tflops"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_states_nominal_and_measures_bf16():
    dev = torch.device("cuda")
    p = peak_flops(dev, size=4096)
    assert p["measured_tflops"] > 10  # any sm80+ GPU: far above this in bf16
    if nominal_peak_tflops(torch.cuda.get_device_name(dev)):
        assert p["peak_source"].startswith("nominal") and p["peak_tflops"] == p["nominal_tflops"]
        assert p["measured_tflops"] < 1.1 * p["nominal_tflops"]  # a measurement above the datasheet is wrong


# ---- the CPU allocator ------------------------------------------------------------------------

_FAULTS_SCRIPT = """
import json, sys, torch
from lrscale.training.hardware import minor_page_faults, tune_allocator
def faults_of_reuse():  # a 48 MiB tensor made and freed twice: are its pages faulted in again?
    torch.empty(12 << 20).fill_(1.0)
    f0 = minor_page_faults()
    torch.empty(12 << 20).fill_(1.0)
    return minor_page_faults() - f0
before = faults_of_reuse()
state = tune_allocator()
faults_of_reuse()
# The best of three: a proactive reclaimer (DAMON on these machines) may take idle heap pages back.
after = min(faults_of_reuse() for _ in range(3))
print(json.dumps({"before": before, "after": after, "state": state, "again": tune_allocator() is state}))
"""


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="mallopt thresholds are glibc's")
def test_tune_allocator_stops_large_tensors_faulting_each_time():
    """In a fresh process (the setting is process-wide and cannot be undone): with glibc's
    defaults a large tensor is mapped and faulted in afresh each time; after tune_allocator()
    the heap keeps its pages and a second one of the same size costs no fault."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["state"]["applied"] and res["again"]
    assert res["before"] > 10_000            # 48 MiB = 12k pages of 4 KiB, each faulted in again
    assert res["after"] < 100


# ---- GPU readiness, checked on the CPU (issue 13) --------------------------------------------------

@pytest.mark.parametrize("moe", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compile_with_activation_checkpointing_really_compiles_graphs(monkeypatch, checkpointing, moe):
    """Compiling a forward that *is* a checkpoint call compiled nothing (Dynamo skips
    torch.utils.checkpoint); the compiled forward must *call* it, and a block (MoE included: its
    forward changes no state) must be one graph with no break. Counted with Dynamo's own counters
    on the 'eager' backend (tracing only, no inductor code generation); MoE with grouped_mm in bf16,
    as on a GPU (the loop reference is data-dependent by design)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    c = cfg(moe=moe)
    param = build_parametrization(ParametrizationConfig(), c)
    model = Transformer(c, param, "sdpa", "grouped_mm")
    init_weights(model, param, seed=0)
    ref = Transformer(c, param, "sdpa", "grouped_mm")
    ref.load_state_dict(model.state_dict())
    apply_compile(model, HardwareConfig(compile=True, activation_checkpointing=checkpointing, dtype="bfloat16"))
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, out_ref = model(idx, idx), ref(idx, idx)
    (out.loss + out.aux_loss).backward()
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(out.loss, out_ref.loss)
    torch._dynamo.reset()


@pytest.mark.parametrize("moe", [False, True])
def test_a_training_step_never_waits_for_the_device(monkeypatch, moe):
    """No .item(), float(), bool() or .tolist() of a tensor inside train_step (each is a host sync
    that stalls a GPU): the loss, aux loss and grad norm come back as tensors, read at logging."""
    from lrscale.optim import GroupLR, OptimConfig, build_optimizer
    from lrscale.parametrization import init_weights, param_table
    from lrscale.training.loop import StepContext, train_step

    c = cfg(moe=False)
    if moe:
        c = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16,
                        moe=MoEConfig(num_experts=4, top_k=2, d_expert=16, balance="aux_free"))
    param = build_parametrization(ParametrizationConfig(), c)
    model = Transformer(c, param, "sdpa", "grouped_mm")
    init_weights(model, param, seed=0)
    opt = build_optimizer(model, param_table(model, param), OptimConfig(), 64, 1e4)
    ctx = StepContext(model, model, opt, GroupLR(opt, lambda s: 1.0), contextlib.nullcontext(), CPU, 2, 1.0)
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    train_step(ctx, x, x.roll(-1, 1), 0)  # warm-up outside the guard (lazy state creation)

    ours = str(Path(__file__).resolve().parents[1])

    def guarded(name):
        original = getattr(torch.Tensor, name)

        def call(self, *a, **k):  # a read from this project's code waits for the device; torch's own may not
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(ours) and "/tests/" not in caller:
                raise AssertionError(f"host sync inside train_step: Tensor.{name} called from {caller}")
            return original(self, *a, **k)
        return call
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, guarded(name))
    m = train_step(ctx, x, x.roll(-1, 1), 1)
    monkeypatch.undo()
    assert all(isinstance(m[k], torch.Tensor) and m[k].dim() == 0 for k in ("loss", "aux_loss", "grad_norm"))
    assert math.isfinite(float(m["loss"]))


@pytest.mark.parametrize("torch_version, capability, verdict", [
    ("2.8.0", (9, 0), None), ("2.8.0", (8, 0), "sm90"),            # 2.8: sm90 only
    ("2.11.0", (9, 0), None), ("2.11.0", (10, 0), None),          # the fast paths
    ("2.11.0", (8, 0), "warn"),                                     # runs, through a host-synced fallback
])
def test_grouped_mm_gated_by_torch_version_and_gpu(monkeypatch, torch_version, capability, verdict):
    from lrscale.models.moe import EXPERT_KERNELS

    monkeypatch.setattr(torch, "__version__", torch_version)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    kernel = EXPERT_KERNELS["grouped_mm"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        why = kernel.unsupported(torch.device("cuda"), torch.bfloat16, widths={"model.d_model": 64})
    if verdict in (None, "warn"):
        assert why is None
        assert any("host sync per GEMM" in str(w.message) for w in caught) == (verdict == "warn")
    else:
        assert why is not None and verdict in why


def test_eager_attention_stays_fp32_inside_bf16_autocast():
    from lrscale.models import eager_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=g) for _ in range(3))
    ref = eager_attention(q.double(), k.double(), v.double(), 0.25).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = eager_attention(q, k, v, 0.25)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)  # bf16 matmuls would be off by ~1e-2


@pytest.mark.parametrize("name, key, tflops", [
    ("NVIDIA GH200 480GB", "GH200", 989.0), ("NVIDIA H800", "H800", 989.0), ("NVIDIA H800 PCIe", "H800 PCIe", 756.0),
])
def test_nominal_peak_table_knows_the_hopper_variants(name, key, tflops):
    assert nominal_peak_tflops(name) == (key, tflops)
