"""Every hardware decision, applied from outside the model: device, dtype, kernels,
activation checkpointing, compile, and the peak FLOP/s that MFU is measured against.
The model files never see a device string.

    setup_torch(hw, model_cfg)     before building: allocator, device, kernels x device x dtype, threads, TF32
    apply_hardware(core, hw, ...)  after building: activation checkpointing -> compile -> DDP/FSDP,
                                   with the autocast context and the optimizer flavour the loop needs
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

from lrscale.models import ATTENTION_KERNELS, EXPERT_KERNELS, BackendUnavailableError, ModelConfig
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

def check_kernels(hw: HardwareConfig, model: ModelConfig, device: torch.device) -> None:
    """Before building: the chosen attention and expert kernels run on this device, dtype and
    shape, and their optional packages import (each kernel's record, models/kernels.py). Fails
    loudly, listing the kernels that would run here."""
    dtype = TORCH_DTYPES[hw.dtype]
    choices = [(ATTENTION_KERNELS, hw.attention_backend, {"d_head": model.d_head})]
    if model.is_moe:
        widths = {"model.d_model": model.d_model, "model.moe.d_expert (or d_ff)": model.expert_width}
        choices.append((EXPERT_KERNELS, hw.expert_backend, {"widths": widths, "compile": hw.compile}))
    for registry, name, shape in choices:
        why = registry[name].unsupported(device, dtype, **shape)
        if why:
            ok = [n for n, k in registry.items() if k.unsupported(device, dtype, **shape) is None]
            raise BackendUnavailableError(
                f"{registry[name].field}={name} {why}. Here ({device.type}, {hw.dtype}, compile={hw.compile}) "
                f"these run: {', '.join(ok)}")


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

def apply_compile(model: nn.Module, hw: HardwareConfig) -> nn.Module:
    """Activation checkpointing, then torch.compile, on each transformer block (not the whole
    model: identical blocks share one compiled graph, fast to compile, same numerics).

    Only `forward` is replaced, so parameter names, state dicts and the parameter table are
    unchanged. The compiled function *calls* the non-reentrant checkpoint (torchtitan's order):
    Dynamo then traces the block inside it as one graph. Compiling a forward that *is* a
    checkpoint partial compiles nothing (Dynamo skips torch.utils.checkpoint itself), which is
    how an earlier version ran eagerly under compile=true; tests/test_hardware.py counts the graphs.
    Blocks are pure functions of their input (models/transformer.py), so recomputing one in
    backward changes no state."""
    if hw.compile:
        # Every block (and every config a test or a basic-launcher sweep builds in one process)
        # is a new code object to guard: leave room before Dynamo's recompile limit falls back to eager.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for block in model.blocks:
        forward = block.forward
        if hw.activation_checkpointing:
            forward = _checkpointed(forward)
        if hw.compile:
            forward = torch.compile(forward)
        block.forward = forward
    return model


def _checkpointed(forward):
    def checkpointed_forward(*args):  # activations recomputed in backward (non-reentrant)
        return checkpoint(forward, *args, use_reentrant=False)
    return checkpointed_forward


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
    "GH200": 989.0,       # the Grace Hopper superchip's H100 (same GH100 tensor cores)
    "H800 PCIe": 756.0,   # the export H100 parts: same compute, less interconnect
    "H800": 989.0,
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
