"""Dense and MoE transformers. No device, compile or distributed logic lives here."""
from .attention import ATTENTION_BACKENDS, eager_attention, get_attention_backend, sdpa_attention
from .config import ModelConfig, MoEConfig
from .moe import EXPERT_BACKENDS, MoE, Router, get_expert_backend, grouped_mm_experts, loop_experts
from .transformer import Block, ModelOutput, Transformer

__all__ = [
    "ATTENTION_BACKENDS", "EXPERT_BACKENDS", "Block", "ModelConfig", "ModelOutput", "MoE", "MoEConfig",
    "Router", "Transformer", "eager_attention", "get_attention_backend", "get_expert_backend",
    "grouped_mm_experts", "loop_experts", "sdpa_attention",
]
