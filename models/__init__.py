"""Dense and MoE transformers. No device, compile or distributed logic lives here: each kernel's
record (models/kernels.py) says what it runs on, and training/hardware.py decides."""
from .attention import ATTENTION_KERNELS, eager_attention, sdpa_attention
from .config import ModelConfig, MoEConfig
from .kernels import BackendUnavailableError, Kernel, lookup
from .moe import EXPERT_KERNELS, MoE, Router, grouped_mm_experts, loop_experts
from .transformer import Block, ModelOutput, Transformer

__all__ = [
    "ATTENTION_KERNELS", "EXPERT_KERNELS", "BackendUnavailableError", "Block", "Kernel", "ModelConfig",
    "ModelOutput", "MoE", "MoEConfig", "Router", "Transformer", "eager_attention", "grouped_mm_experts", "lookup",
    "loop_experts", "sdpa_attention",
]
