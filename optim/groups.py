"""AdamW parameter groups from the parametrization's per-parameter table.

Weight-decay modes are all expressed as the per-group `weight_decay` of PyTorch's
(coupled) AdamW, whose step is p <- p - lr_group(t) * wd_group * p:
  coupled      wd_group = lambda * wd_mult           (decay ~ lr_group * lambda; Loshchilov & Hutter 2019;
                                                       with parametrization.wd_convention=mup, wd_mult =
                                                       1/lr_mult keeps eta*lambda fixed: mup's MuAdamW)
  independent  wd_group = lambda * wd_mult / lr0_g    (decay ~ schedule factor * lambda, independent of
                                                       the group LR; Wortsman et al., arXiv 2309.14322)
  timescale    wd_group = wd_mult / (lr0_g * tau)     (per-step decay eta*lambda = 1/tau_iter fixed, with
                                                       tau = wd_timescale_tokens / tokens_per_step;
                                                       Wang & Aitchison, arXiv 2405.13698)
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .config import WEIGHT_DECAY_MODES, OptimConfig, validate_optim  # noqa: F401 (re-exported)

def horizon_lr(cfg: OptimConfig, total_tokens: float) -> float:
    """Token-horizon rule lr(D) = lr(D0) * (D/D0)^-beta (Bjorck et al., arXiv 2409.19913;
    beta = 0.3509 is the D exponent of arXiv 2601.05049 Eq. 6)."""
    if cfg.horizon_beta == 0.0:
        return cfg.lr
    return cfg.lr * (total_tokens / cfg.horizon_base_tokens) ** (-cfg.horizon_beta)


def group_weight_decay(cfg: OptimConfig, wd_mult: float, group_lr: float, tokens_per_step: int) -> float:
    if wd_mult == 0.0:
        return 0.0
    if cfg.weight_decay_mode == "coupled":
        return cfg.weight_decay * wd_mult
    if cfg.weight_decay_mode == "independent":
        return cfg.weight_decay * wd_mult / group_lr
    tau_iters = cfg.wd_timescale_tokens / tokens_per_step
    return wd_mult / (group_lr * tau_iters)


def check_wd_convention(cfg: OptimConfig, table: list[dict]) -> None:
    """The `mup` convention (wd_mult = 1/lr_mult, mup's MuAdamW) keeps eta*lambda fixed only
    under coupled decay; the other modes already make the decay independent of the group LR."""
    if cfg.weight_decay_mode != "coupled" and any(r.get("wd_convention") == "mup" for r in table):
        raise ValueError(f"parametrization.wd_convention=mup rescales weight decay for coupled AdamW decay, but "
                         f"optim.weight_decay_mode={cfg.weight_decay_mode} does not couple decay to the group LR; "
                         "use optim.weight_decay_mode=coupled or parametrization.wd_convention=none")


def build_param_groups(model: nn.Module, table: list[dict], cfg: OptimConfig, base_lr: float,
                       tokens_per_step: int) -> list[dict]:
    """One group per distinct (lr, wd, eps) multiplier triple, in first-seen order."""
    params = dict(model.named_parameters())
    missing = set(params) ^ {r["name"] for r in table}
    if missing:
        raise ValueError(f"parameter table and model disagree on: {sorted(missing)[:5]}")
    check_wd_convention(cfg, table)
    groups: OrderedDict[tuple, dict] = OrderedDict()
    for r in table:
        key = (r["lr_mult"], r["wd_mult"], r["eps_mult"])
        if key not in groups:
            lr = base_lr * r["lr_mult"]
            groups[key] = dict(
                params=[], names=[], roles=set(), lr=lr, initial_lr=lr, lr_mult=r["lr_mult"],
                weight_decay=group_weight_decay(cfg, r["wd_mult"], lr, tokens_per_step),
                eps=cfg.eps * r["eps_mult"],
            )
        g = groups[key]
        g["params"].append(params[r["name"]])
        g["names"].append(r["name"])
        g["roles"].add(r["role"])
    out = list(groups.values())
    for g in out:
        g["roles"] = sorted(g["roles"])
    return out


def build_optimizer(model: nn.Module, table: list[dict], cfg: OptimConfig, tokens_per_step: int,
                    total_tokens: float, fused: bool | None = None) -> torch.optim.AdamW:
    validate_optim(cfg)
    base_lr = horizon_lr(cfg, total_tokens)
    groups = build_param_groups(model, table, cfg, base_lr, tokens_per_step)
    return torch.optim.AdamW(groups, lr=base_lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
