"""Every hardware decision, applied from outside the model: device, dtype, kernels,
compile. The model files never see a device string."""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from models import ATTENTION_BACKENDS, EXPERT_BACKENDS
from models.moe import grouped_mm_fn

from .config import HardwareConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(hw: HardwareConfig) -> torch.device:
    if hw.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if hw.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hardware.device=cuda but no CUDA device is visible; use hardware=cpu")
    if hw.device not in ("cpu", "cuda"):
        raise ValueError(f"hardware.device='{hw.device}' is unknown; valid: cpu, cuda, auto")
    return torch.device(hw.device)


def validate_hardware(hw: HardwareConfig) -> None:
    if hw.dtype not in DTYPES:
        raise ValueError(f"hardware.dtype='{hw.dtype}' is unknown; valid: {', '.join(DTYPES)}")
    if hw.attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"hardware.attention_backend='{hw.attention_backend}' is unknown; "
                         f"valid: {', '.join(ATTENTION_BACKENDS)}")
    if hw.expert_backend not in EXPERT_BACKENDS:
        raise ValueError(f"hardware.expert_backend='{hw.expert_backend}' is unknown; "
                         f"valid: {', '.join(EXPERT_BACKENDS)}")
    if hw.data_parallel not in ("none", "ddp", "fsdp"):
        raise ValueError(f"hardware.data_parallel='{hw.data_parallel}' is unknown; valid: none, ddp, fsdp")


def resolve_expert_backend(hw: HardwareConfig) -> None:
    """grouped_mm needs torch >= 2.8; on an older torch fall back to the loop reference, loudly."""
    if hw.expert_backend == "grouped_mm" and grouped_mm_fn() is None:
        warnings.warn(f"torch {torch.__version__} has no grouped_mm; using hardware.expert_backend=loop")
        hw.expert_backend = "loop"


def setup_torch(hw: HardwareConfig) -> torch.device:
    validate_hardware(hw)
    resolve_expert_backend(hw)
    device = resolve_device(hw)
    if hw.num_threads > 0:
        torch.set_num_threads(hw.num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = hw.tf32
        torch.backends.cudnn.allow_tf32 = hw.tf32
    return device


def autocast(hw: HardwareConfig, device: torch.device):
    """bf16 autocast for matmuls; fp32 master weights, router and loss stay fp32 by construction."""
    if DTYPES[hw.dtype] == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[hw.dtype])


def apply_compile(model: nn.Module, hw: HardwareConfig) -> nn.Module:
    """Compile each transformer block (not the whole model): fast to compile, same numerics."""
    if hw.compile:
        for block in model.blocks:
            block.compile()
    return model


def fused_optimizer(hw: HardwareConfig, device: torch.device) -> bool | None:
    if hw.fused_optimizer is not None:
        return hw.fused_optimizer
    return True if device.type == "cuda" else None
