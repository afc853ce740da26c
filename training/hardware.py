"""Every hardware decision, applied from outside the model: device, dtype, kernels,
activation checkpointing, compile, and the peak FLOP/s that MFU is measured against.
The model files never see a device string.

    setup_torch(hw, model_cfg)     validate names, then kernels x device x dtype, before building
    autocast(hw, device)           bf16 autocast; master weights, router, norms and loss stay fp32
    apply_compile(model, hw)       per block: activation checkpointing, then torch.compile
    peak_flops(device), mfu(...)   the stated peak and model FLOPs utilisation per step
    tune_allocator()               once at process start-up: keep large CPU tensors on the heap
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
from dataclasses import dataclass
from typing import Any
import os
import platform
import re
import statistics
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lrscale.models import ATTENTION_BACKENDS, EXPERT_BACKENDS, ModelConfig, get_attention_backend, get_expert_backend
from lrscale.models.backends import BackendUnavailableError
from lrscale.models.moe import grouped_mm_fn

from .config import HardwareConfig

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # by the names training/config.py accepts
_HALF = (torch.float16, torch.bfloat16)


def resolve_device(hw: HardwareConfig) -> torch.device:
    if hw.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if hw.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hardware.device=cuda but no CUDA device is visible; use hardware=cpu")
    return torch.device(hw.device)


def resolve_expert_backend(hw: HardwareConfig) -> None:
    """grouped_mm needs torch >= 2.8; on an older torch fall back to the loop reference, loudly."""
    if hw.expert_backend == "grouped_mm" and grouped_mm_fn() is None:
        warnings.warn(f"torch {torch.__version__} has no grouped_mm; using hardware.expert_backend=loop")
        hw.expert_backend = "loop"


# ---- which kernels this device and dtype can run ------------------------------------------
# Each returns why a backend cannot run (None: it can). Sources: PyTorch's SDPA dispatch
# rules (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp), the grouped_mm docs
# (CUDA: bf16, sm80+) and its meta function, which traces bf16 only (so compile needs bf16).

def _cuda_half(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return "needs a CUDA device (hardware=gpu)"
    if dtype not in _HALF:
        return f"needs hardware.dtype=bfloat16 (got {dtype})"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 0):
        return f"needs compute capability >= 8.0 (Ampere or newer); this GPU is sm{cap[0]}{cap[1]}"
    return None


def attention_support(name: str, device: torch.device, dtype: torch.dtype, d_head: int) -> str | None:
    if name in ("eager", "sdpa"):
        return None  # eager runs anywhere; sdpa falls back to its math kernel where nothing fused fits
    why = _cuda_half(device, dtype)
    if why:
        return why
    if name in ("sdpa_flash", "flash_attn"):
        if d_head > 256 or d_head % 8:
            return f"needs a head size <= 256 and a multiple of 8 (d_model / n_heads = {d_head})"
        if name == "sdpa_flash" and not torch.backends.cuda.is_flash_attention_available():
            return f"this torch build ({torch.__version__}) has no FlashAttention kernels"
    if name == "sdpa_cudnn":
        if not torch.backends.cudnn.is_available():
            return "this torch build has no cuDNN"
        cap, version = torch.cuda.get_device_capability(device), torch.backends.cudnn.version() or 0
        d256 = (cap == (9, 0) or cap[0] == 10) and version > 92200  # backward: d <= 128 or d == 256
        if d_head % 8 or not (d_head <= 128 or (d256 and d_head == 256)):
            return f"needs a head size that is a multiple of 8 and <= 128 (d_model / n_heads = {d_head})"
        if torch.are_deterministic_algorithms_enabled():
            return "is not deterministic, and torch.use_deterministic_algorithms is on"
    return None


def expert_support(name: str, device: torch.device, dtype: torch.dtype, compile: bool) -> str | None:
    if name == "loop":
        return None
    if name == "grouped_mm":
        if device.type == "cuda":
            return _cuda_half(device, dtype) or (None if dtype == torch.bfloat16 else "needs hardware.dtype=bfloat16")
        if compile and dtype != torch.bfloat16:
            return "under torch.compile traces bf16 only: set hardware.dtype=bfloat16 or hardware.compile=false"
        return None
    if name == "megablocks":
        return _cuda_half(device, dtype) or (None if dtype == torch.bfloat16 else "needs hardware.dtype=bfloat16")
    return None


def check_kernels(hw: HardwareConfig, model: ModelConfig, device: torch.device) -> None:
    """Before building: the chosen attention/expert backends can run on this device, dtype and
    shape, and their optional packages import. Fails loudly, listing what would run."""
    dtype = TORCH_DTYPES[hw.dtype]
    get_attention_backend(hw.attention_backend)  # optional package importable?
    why = attention_support(hw.attention_backend, device, dtype, model.d_head)
    if why:
        ok = [n for n in ATTENTION_BACKENDS if attention_support(n, device, dtype, model.d_head) is None]
        raise BackendUnavailableError(
            f"hardware.attention_backend={hw.attention_backend} {why}. Here ({device.type}, {hw.dtype}) "
            f"these run: {', '.join(ok)}")
    if not model.is_moe:
        return
    get_expert_backend(hw.expert_backend, model.d_model, model.expert_width)  # package, sizes
    why = expert_support(hw.expert_backend, device, dtype, hw.compile)
    if why:
        ok = [n for n in EXPERT_BACKENDS if expert_support(n, device, dtype, hw.compile) is None]
        raise BackendUnavailableError(
            f"hardware.expert_backend={hw.expert_backend} {why}. Here ({device.type}, {hw.dtype}, "
            f"compile={hw.compile}) these run: {', '.join(ok)}")


def setup_torch(hw: HardwareConfig, model: ModelConfig | None = None) -> torch.device:
    """Given the model config, check its kernels against this device and dtype; set threads and TF32.
    (The names were validated with the config, training/config.py HardwareConfig.)"""
    tune_allocator()  # before the corpus and the model allocate anything (glibc only; see tune_allocator)
    resolve_expert_backend(hw)
    device = resolve_device(hw)
    if model is not None:
        check_kernels(hw, model, device)
    if hw.num_threads > 0:
        torch.set_num_threads(hw.num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = hw.tf32
        torch.backends.cudnn.allow_tf32 = hw.tf32
    return device


def autocast(hw: HardwareConfig, device: torch.device):
    """bf16 autocast for matmuls. Master weights stay fp32 (autocast casts per op); the
    router, RMSNorm, attention softmax of the eager path and the loss are fp32 by
    construction in models/ (tests/test_backends.py checks the dtypes)."""
    if TORCH_DTYPES[hw.dtype] == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[hw.dtype])


# ---- per-block wrappers -------------------------------------------------------------------

def apply_activation_checkpointing(model: nn.Module, hw: HardwareConfig) -> nn.Module:
    """Recompute each block's activations in backward instead of keeping them
    (non-reentrant torch.utils.checkpoint). Only `forward` is wrapped, so parameter
    names, state dicts and the parameter table are unchanged.

    The recompute stops once the saved tensors backward needs are rebuilt (torch's
    default early stop), before the MoE's load bookkeeping, so routing loads are counted
    once (tests/test_backends.py). Were they counted twice, the DeepSeek-V3 bias update,
    which uses only the sign of (mean load - load), would not change.
    """
    if hw.activation_checkpointing:
        for block in model.blocks:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return model


def apply_compile(model: nn.Module, hw: HardwareConfig) -> nn.Module:
    """Activation checkpointing, then torch.compile, on each transformer block (not the
    whole model: identical blocks share one compiled graph, fast to compile, same numerics)."""
    apply_activation_checkpointing(model, hw)
    if hw.compile:
        for block in model.blocks:
            block.compile()
    return model


def fused_optimizer(hw: HardwareConfig, device: torch.device) -> bool | None:
    if hw.fused_optimizer is not None:
        return hw.fused_optimizer
    return True if device.type == "cuda" else None


@dataclass
class Accelerated:
    """What the loop needs from the hardware step."""
    model: nn.Module                  # the module to call: checkpointed, compiled, DDP/FSDP-wrapped as configured
    autocast: Any                     # context for forward passes (bf16 autocast or a no-op)
    fused_optimizer: bool | None      # AdamW(fused=...)


def apply_hardware(core: nn.Module, hw: HardwareConfig, world, device: torch.device) -> Accelerated:
    """Every hardware decision applied to a built, initialised model, in torchtitan's order
    (`parallelize_*`): activation checkpointing, then torch.compile, then data parallelism
    (DDP or FSDP2). Parameter names are unchanged, so the parametrization's table still
    applies; build the optimizer from `core` after this (FSDP2 shards its parameters in place)."""
    from .distributed import wrap

    model = wrap(apply_compile(core, hw), hw, world)
    return Accelerated(model, autocast(hw, device), fused_optimizer(hw, device))


# ---- peak FLOP/s and MFU ------------------------------------------------------------------
# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, in TFLOP/s.
# torchtitan uses the same 989 for the H100 SXM. Matched against the device name.
NOMINAL_PEAK_TFLOPS = {  # most specific first: the first key whose words all appear wins
    "H200 NVL": 835.0,
    "H200": 989.0,        # same GH100 chip and clocks as the H100 SXM, more HBM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,        # the SXM part, named "NVIDIA H100 80GB HBM3"
    "A100": 312.0,
}


def nominal_peak_tflops(device_name: str) -> tuple[str, float] | None:
    """(table key, bf16 dense TFLOP/s) for a CUDA device name, or None if not in the table."""
    words = set(re.split(r"[^A-Z0-9]+", device_name.upper()))  # "NVIDIA A100-SXM4-80GB" -> A100, SXM4, ...
    for key, tflops in NOMINAL_PEAK_TFLOPS.items():
        if set(key.upper().split()) <= words:
            return key, tflops
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, iters: int = 10) -> float:
    """Median TFLOP/s of (size x size) @ (size x size) on random data (never zeros),
    rotating three input pairs so repeats are not served from cache; warmed up first."""
    g = torch.Generator(device=device).manual_seed(0)  # a private RNG: the run's RNG state is untouched
    pairs = [(torch.randn(size, size, device=device, dtype=dtype, generator=g),
              torch.randn(size, size, device=device, dtype=dtype, generator=g)) for _ in range(3)]
    for a, b in pairs:
        a @ b
    times = []
    for i in range(iters):
        a, b = pairs[i % 3]
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / statistics.median(times) / 1e12


def peak_flops(device: torch.device, measure: bool = True, size: int | None = None) -> dict:
    """The peak that MFU divides by, and where it comes from.

    CUDA: the nominal bf16 dense peak of the device when the table knows it (the usual
    MFU convention), else the measured bf16 matmul rate; the measured rate is recorded
    beside it either way. CPU: the measured fp32 matmul rate at the current thread count.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        size = size or 8192
        measured = measure_matmul_tflops(device, torch.bfloat16, size) if measure else None
        nominal = nominal_peak_tflops(name)
        info = {"device": name, "measured_tflops": measured, "measured_with": f"bf16 matmul {size}^3",
                "nominal_tflops": nominal[1] if nominal else None}
        if nominal:
            return {**info, "peak_tflops": nominal[1], "peak_source": f"nominal {nominal[0]} bf16 dense (datasheet)"}
        if measured is None:
            raise ValueError(f"no nominal peak for '{name}'; call peak_flops with measure=True")
        return {**info, "peak_tflops": measured, "peak_source": f"measured bf16 matmul {size}^3 on {name}"}
    size = size or 512
    threads = torch.get_num_threads()
    measured = measure_matmul_tflops(device, torch.float32, size)
    return {"device": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": threads,
            "measured_tflops": measured, "measured_with": f"fp32 matmul {size}^3", "nominal_tflops": None,
            "peak_tflops": measured, "peak_source": f"measured fp32 matmul {size}^3 on {threads} CPU thread(s)"}


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float, world_size: int = 1) -> dict:
    """Achieved model TFLOP/s per device and its fraction of the peak (PaLM's MFU, arXiv
    2204.02311 App. B: model FLOPs only, so recomputation does not count)."""
    tflops = tokens_per_s * flops_per_token / world_size / 1e12
    return {"tflops": tflops, "mfu": tflops / peak_tflops}


# ---- the CPU allocator ----------------------------------------------------------------------
# glibc's malloc serves a request of at least M_MMAP_THRESHOLD bytes (128 KiB at first, raised
# by each freed mapping up to 32 MiB) with a fresh mmap and unmaps it on free; freed heap
# above M_TRIM_THRESHOLD (twice that) goes back to the kernel. A training step allocates and
# frees the same tensors every step: logits-sized ones (2048 x 4096 fp32 is exactly 32 MiB,
# just above the largest dynamic threshold) are mapped afresh each time, and each new page is
# faulted in and zeroed by the kernel: 7k to 57k minor page faults per step, 14-31% of the CPU
# time in the kernel on the fit-grid models (issue #13). Fixed thresholds of 1 GiB keep every
# tensor below that on the heap and the heap's pages mapped between steps, so a step reuses
# them: no faults, the same arithmetic. The cost is resident memory held at its peak.
# mallopt(3): https://man7.org/linux/man-pages/man3/mallopt.3.html
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's malloc.h
_ALLOCATOR_BYTES = 1 << 30
_allocator_state: dict | None = None


def tune_allocator() -> dict:
    """Call once at process start-up (train.py, benchmarks/throughput.py), before building
    anything: fixed glibc mmap and trim thresholds (see above). Linux + glibc only; a no-op
    elsewhere (macOS, musl, Windows) and on a second call. Returns what it did."""
    global _allocator_state
    if _allocator_state is not None:
        return _allocator_state
    libc_name, libc_version = platform.libc_ver()
    if not sys.platform.startswith("linux") or libc_name != "glibc":
        _allocator_state = {"applied": False, "reason": f"not Linux with glibc ({sys.platform}, {libc_name or '?'})"}
        return _allocator_state
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, _ALLOCATOR_BYTES) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, _ALLOCATOR_BYTES) == 1)
    except (OSError, AttributeError) as e:
        _allocator_state = {"applied": False, "reason": f"mallopt unavailable: {e}"}
        return _allocator_state
    _allocator_state = {"applied": ok, "glibc": libc_version, "mmap_threshold": _ALLOCATOR_BYTES,
                        "trim_threshold": _ALLOCATOR_BYTES, **({} if ok else {"reason": "mallopt refused"})}
    return _allocator_state


def minor_page_faults() -> int:
    """Minor page faults of this process so far (compare before and after a step)."""
    import resource  # POSIX only
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
