"""The parametrization protocol: one object answers, per parameter, how to initialise it
and how the optimizer treats it, plus the few forward multipliers the model needs.

Model code never asks "is this muP?": it asks the parametrization for numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn


class Role(str, Enum):
    """What a parameter does; decides its init and optimizer multipliers."""

    EMBEDDING = "embedding"
    ATTN_QKV = "attn_qkv"
    ATTN_OUT = "attn_out"
    MLP_IN = "mlp_in"
    MLP_OUT = "mlp_out"
    EXPERT_IN = "expert_in"
    EXPERT_OUT = "expert_out"
    ROUTER = "router"
    NORM = "norm"
    UNEMBEDDING = "unembedding"

    @property
    def is_hidden(self) -> bool:
        """Matrices whose fan-in and fan-out both grow with width (muP 'hidden weights')."""
        return self in HIDDEN_ROLES

    @property
    def is_output_projection(self) -> bool:
        """Matrices that write into the residual stream."""
        return self in (Role.ATTN_OUT, Role.MLP_OUT, Role.EXPERT_OUT)


HIDDEN_ROLES = frozenset(
    {Role.ATTN_QKV, Role.ATTN_OUT, Role.MLP_IN, Role.MLP_OUT, Role.EXPERT_IN, Role.EXPERT_OUT}
)


def role_param(data: torch.Tensor, role: Role) -> nn.Parameter:
    """Create a parameter that carries its role from the moment it exists."""
    p = nn.Parameter(data)
    p.role = Role(role)  # type: ignore[attr-defined]
    return p


def role_of(name: str, p: nn.Parameter) -> Role:
    role = getattr(p, "role", None)
    if role is None:
        raise TypeError(
            f"parameter '{name}' has no role; create it with parametrization.role_param(tensor, Role.X)"
        )
    return role


@dataclass(frozen=True)
class ParamSpec:
    """Everything the parametrization decides for one parameter."""

    init_std: float     # 0.0 = zero init; norms ignore it and start at 1
    lr_mult: float      # multiplies the base LR (and the schedule factor multiplies that)
    wd_mult: float      # multiplies the base weight decay (0 = no decay)
    eps_mult: float     # multiplies Adam's epsilon


class Parametrization:
    """Base protocol. Subclasses override `spec` and the forward multipliers.

    Forward multipliers (applied by the model, always, so that every
    parametrization is the same code path):
      input_mult      embedding output
      output_mult     unembedding logits
      router_mult     router logits
      attn_scale(d)   softmax temperature for head size d
      residual_mult   every residual branch (attention and MLP/MoE)
    """

    name = "base"

    def spec(self, role: Role, shape: tuple[int, ...]) -> ParamSpec:  # pragma: no cover
        raise NotImplementedError

    input_mult: float = 1.0
    output_mult: float = 1.0
    router_mult: float = 1.0
    residual_mult: float = 1.0
    wd_convention: str = "none"   # "mup": wd_mult = 1/lr_mult, which assumes coupled AdamW decay

    def attn_scale(self, d_head: int) -> float:
        return 1.0 / math.sqrt(d_head)
