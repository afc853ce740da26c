"""Parametrizations (SP, muP) behind one protocol, plus deterministic init and the
per-parameter table that the optimizer and the run directory use."""
from __future__ import annotations

import torch
from torch import nn

from .base import HIDDEN_ROLES, ParamSpec, Parametrization, Role, role_of, role_param
from .config import WD_CONVENTIONS, ParametrizationConfig
from .depth import IN_BLOCK_ROLES, DepthRules
from .mup import MuLRParametrization, MuParametrization
from .standard import StandardParametrization

PARAMETRIZATIONS = {"sp": StandardParametrization, "mup": MuParametrization, "sp_mup_lr": MuLRParametrization}


def build_parametrization(cfg: ParametrizationConfig, model_cfg) -> Parametrization:
    """Build the parametrization named by `cfg.name` for a model config."""
    try:
        cls = PARAMETRIZATIONS[cfg.name]
    except KeyError:
        raise ValueError(
            f"parametrization.name='{cfg.name}' is unknown; valid: {', '.join(PARAMETRIZATIONS)}"
        ) from None
    return cls(cfg, model_cfg)


def param_table(model: nn.Module, param: Parametrization) -> list[dict]:
    """One row per parameter: name, role, shape and what the parametrization decided."""
    rows = []
    for name, p in model.named_parameters():
        role = role_of(name, p)
        s = param.spec(role, tuple(p.shape))
        # wd_convention travels with wd_mult: `mup` multipliers assume coupled AdamW decay,
        # which the optimizer checks (optim/groups.py).
        rows.append(dict(name=name, role=role.value, shape=list(p.shape), init_std=s.init_std,
                         lr_mult=s.lr_mult, wd_mult=s.wd_mult, eps_mult=s.eps_mult,
                         wd_convention=param.wd_convention))
    return rows


@torch.no_grad()
def init_weights(model: nn.Module, param: Parametrization, seed: int) -> None:
    """Initialise every parameter once, in named order, from one seeded generator.

    Norm gains start at 1; std 0 means zero init; everything else is N(0, std^2).
    The draw order depends only on the parameter names, so SP and muP at base width
    produce bit-identical weights.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        role = role_of(name, p)
        spec = param.spec(role, tuple(p.shape))
        if role == Role.NORM:
            p.fill_(1.0)
        elif spec.init_std == 0.0:
            p.zero_()
        else:
            w = torch.randn(p.shape, generator=gen, dtype=torch.float32) * spec.init_std
            p.copy_(w.to(p.dtype))


def format_param_table(rows: list[dict]) -> str:
    head = f"{'name':<44} {'role':<12} {'shape':<16} {'init_std':>9} {'lr':>7} {'wd':>5} {'eps':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<44} {r['role']:<12} {str(tuple(r['shape'])):<16} {r['init_std']:>9.5f} "
            f"{r['lr_mult']:>7.4f} {r['wd_mult']:>5.2f} {r['eps_mult']:>7.4f}"
        )
    return "\n".join(lines)


__all__ = [
    "HIDDEN_ROLES", "IN_BLOCK_ROLES", "PARAMETRIZATIONS", "WD_CONVENTIONS", "DepthRules", "ParamSpec",
    "Parametrization", "ParametrizationConfig",
    "Role", "build_parametrization", "format_param_table", "init_weights", "param_table",
    "role_of", "role_param",
]
