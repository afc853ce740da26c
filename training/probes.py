"""Cheap training probes (PAPER.md Sec. 5, figures 5 and 6), logged every `train.probe_every`
steps to metrics.jsonl, and `summarize_probes` that condenses a run's metrics for summary.json.

A probe step costs one extra forward of the step's batch (eval mode, no grad), one copy of
the weights taken before the optimizer step, and a few norms. Names, all under `probe/`:

  act_rms/embed            RMS of the embedding output (times input_mult): the residual stream entering block 0
  act_rms/block{i}/attn    RMS of block i's attention branch output, before the residual multiplier
  act_rms/block{i}/ffn     RMS of block i's MLP or MoE branch output, before the residual multiplier
  act_rms/block{i}         RMS of the residual stream after block i
  logit_rms                RMS of the output logits (times output_mult)
  max_attn_logit           largest pre-softmax attention logit q.k*scale over layers, heads and causal
                           positions (Wortsman et al., arXiv 2309.14322: loss spikes follow growing logits)
  attn_logit_rms           RMS of those logits (the quantity the 1/d_head muP scale keeps width-independent)
  update_rel/<role>        ||W_after - W_before||_F / ||W_before||_F over this step's optimizer update, the
                           parameters of one role pooled (sqrt of summed squares over sqrt of summed squares).
                           Frobenius, so for Adam the expected width scaling of hidden roles is m^0 under SP
                           and m^-1/2 under muP (the spectral ratio, ~flat under muP, is in analysis/coord_check.py)
  grad_norm/<role>         L2 norm of the role's gradients at this step, after clipping
  eps_dominance/<role>     share of the role's Adam coordinates with sqrt(v_hat) < eps: there eps, not the
                           gradient, sets the update size (what the muP / depth eps rules are about; Adam-atan2,
                           arXiv 2407.05872, and CompleteP, arXiv 2505.01618, discuss the regime). ~0 everywhere
                           means an eps rule has nothing to act on; ~1 means eps is doing the optimizer's job
  wd_tau_steps/<role>      AdamW's EMA timescale tau = 1 / (lr_group(t) * wd_group) at this step (Wang &
  wd_tau_tokens/<role>     Aitchison, arXiv 2405.13698), in steps and in tokens; it grows as the schedule decays
                           the LR. Absent for roles without decay

Not duplicated here, logged by the loop every `logging.log_every` steps: `grad_norm` (global,
before clipping) and the router statistics `moe/imbalance` (max/mean tokens per expert),
`moe/router_entropy`, `moe/router_z` (mean logsumexp^2 of router logits), `moe/load_balance_loss`.

`summarize_probes(rows)` reads those rows back: maxima and final values of the stability metrics
and the number of loss and gradient-norm spikes (OLMo 2, arXiv 2501.00656, "spike score": values
more than 7 standard deviations above the rolling mean of the preceding ones; here over the
preceding 20 logged values, so its resolution is `logging.log_every`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from lrscale.parametrization import role_of


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a (possibly FSDP2-sharded) parameter; collective for DTensors."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def attention_logits(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Pre-softmax logits q.k*scale of `block` for residual input h (B, T, d), causal entries
    only: (B, nh, T(T+1)/2). Uses the attention module's own projections, rotary and scale."""
    q, k, _ = block.attn.qkv(block.attn_norm(h))                  # (B, nh, T, hs), (B, nkv, T, hs)
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1) if rep > 1 else k
    logits = (q.float() @ k.float().transpose(-2, -1)) * block.attn.scale  # (B, nh, T, T)
    T = logits.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=logits.device).tril()
    return logits[..., causal]


def walk_activations(core: nn.Module, x: torch.Tensor, visit: Callable[[str, torch.Tensor], None]) -> None:
    """One no-grad forward of token ids x (B, T), calling visit(name, fp32 tensor) for
    embed, block{i}/attn, block{i}/ffn, block{i}, logits, and attn_logits{i} (once per batch
    row, so a long sequence never holds every row's (nh, T, T) logits at once)."""
    hooks = []

    def keep(name):
        def hook(_module, _inputs, out):
            visit(name, (out[0] if isinstance(out, tuple) else out).detach().float())
        return hook

    for i, block in enumerate(core.blocks):
        hooks.append(block.attn.register_forward_hook(keep(f"block{i}/attn")))
        ffn = block.moe if block.moe is not None else block.mlp
        hooks.append(ffn.register_forward_hook(keep(f"block{i}/ffn")))
    try:
        with torch.no_grad():
            h = torch.nn.functional.embedding(x, core.embed) * core.input_mult  # (B, T, d)
            visit("embed", h.float())
            for i, block in enumerate(core.blocks):
                for row in h.split(1):
                    visit(f"attn_logits{i}", attention_logits(block, row))
                h, _, _ = block(h)
                visit(f"block{i}", h.float())
            visit("logits", (core.unembed(core.final_norm(h)) * core.output_mult).float())  # (B, T, V)
    finally:
        for hk in hooks:
            hk.remove()


def block_activations(core: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tensor `walk_activations` visits, kept whole (small models: coordinate checks)."""
    parts: dict[str, list[torch.Tensor]] = {}
    walk_activations(core, x, lambda name, t: parts.setdefault(name, []).append(t))
    return {name: torch.cat(ts) if len(ts) > 1 else ts[0] for name, ts in parts.items()}


def snapshot_weights(core: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter (on its device), taken before a probe step's optimizer update."""
    with torch.no_grad():
        return {n: _full(p).detach().clone() for n, p in core.named_parameters()}


def relative_updates(core: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per role: ||W - W_before||_F / ||W_before||_F, pooled over the role's parameters."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    with torch.no_grad():
        for n, p in core.named_parameters():
            role = role_of(n, p).value
            w, w0 = _full(p).float(), before[n].float()
            num[role] = num.get(role, 0.0) + float((w - w0).pow(2).sum())
            den[role] = den.get(role, 0.0) + float(w0.pow(2).sum())
    return {r: math.sqrt(num[r]) / math.sqrt(den[r]) if den[r] > 0 else math.inf for r in num}


def grad_norms_by_role(core: nn.Module) -> dict[str, float]:
    sq: dict[str, float] = {}
    for n, p in core.named_parameters():
        if p.grad is not None:
            role = role_of(n, p).value
            sq[role] = sq.get(role, 0.0) + float(_full(p.grad).float().pow(2).sum())
    return {r: math.sqrt(v) for r, v in sq.items()}


@torch.no_grad()
def run_probes(core: nn.Module, x: torch.Tensor, ctx, before: dict[str, torch.Tensor] | None = None) -> dict:
    """The probe row for one step: activations of batch x after the step, and with `before`
    (from `snapshot_weights` ahead of the step) the relative update of each role."""
    sumsq: dict[str, float] = {}
    count: dict[str, int] = {}
    attn_max = -math.inf

    def visit(name: str, t: torch.Tensor) -> None:
        nonlocal attn_max
        key = "attn_logits" if name.startswith("attn_logits") else name
        sumsq[key] = sumsq.get(key, 0.0) + float(t.pow(2).sum())
        count[key] = count.get(key, 0) + t.numel()
        if key == "attn_logits":
            attn_max = max(attn_max, float(t.max()))

    was = core.training
    core.eval()
    try:
        with ctx.autocast:
            walk_activations(core, x.to(ctx.device), visit)
    finally:
        core.train(was)
    rms_of = {k: math.sqrt(sumsq[k] / count[k]) for k in sumsq}
    out: dict[str, float] = {f"probe/act_rms/{k}": v for k, v in rms_of.items() if k not in ("logits", "attn_logits")}
    out["probe/logit_rms"] = rms_of["logits"]
    out["probe/max_attn_logit"] = attn_max
    out["probe/attn_logit_rms"] = rms_of["attn_logits"]
    if before is not None:
        out.update({f"probe/update_rel/{r}": v for r, v in relative_updates(core, before).items()})
    out.update({f"probe/grad_norm/{r}": v for r, v in grad_norms_by_role(core).items()})
    if getattr(ctx, "optimizer", None) is not None:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        out.update(optimizer_monitors(core, ctx.optimizer, tokens_per_step=x.numel() * world))
    return out


@torch.no_grad()
def optimizer_monitors(core: nn.Module, optimizer, tokens_per_step: int) -> dict[str, float]:
    """Per role: Adam-eps dominance and the AdamW EMA timescale (see the module docstring).

    Parameters are matched to their optimizer group by name (`names`, set by optim/groups.py),
    so this also works where wrappers replaced the parameter objects."""
    by_name = {n: (g, p) for g in optimizer.param_groups for n, p in zip(g.get("names", []), g["params"])}
    small: dict[str, float] = {}
    total: dict[str, int] = {}
    tau: dict[str, float] = {}
    for name, p in core.named_parameters():
        if name not in by_name:
            continue
        role = role_of(name, p).value
        group, p_opt = by_name[name]
        decay = group["lr"] * group["weight_decay"]
        if decay > 0:
            tau[role] = min(tau.get(role, math.inf), 1.0 / decay)  # a role spanning groups: its fastest decay
        state = optimizer.state.get(p_opt, {})
        if "exp_avg_sq" not in state:
            continue
        beta2 = group["betas"][1]
        v_hat = _full(state["exp_avg_sq"]).float() / (1.0 - beta2 ** float(state["step"]))
        small[role] = small.get(role, 0.0) + float((v_hat.sqrt() < group["eps"]).sum())
        total[role] = total.get(role, 0) + v_hat.numel()
    out = {f"probe/eps_dominance/{r}": small[r] / total[r] for r in small if total[r]}
    out.update({f"probe/wd_tau_steps/{r}": t for r, t in tau.items()})
    out.update({f"probe/wd_tau_tokens/{r}": t * tokens_per_step for r, t in tau.items()})
    return out


# ---- summary ---------------------------------------------------------------------------------

SPIKE_WINDOW = 20      # preceding logged values the rolling mean/std is taken over
SPIKE_SIGMAS = 7.0     # OLMo 2's threshold
SPIKE_MIN_HISTORY = 5  # no verdict before this many preceding values


def count_spikes(values: list[float], window: int = SPIKE_WINDOW, sigmas: float = SPIKE_SIGMAS,
                 min_history: int = SPIKE_MIN_HISTORY) -> int:
    """Values above mean + sigmas * std of the preceding `window` values (or not finite)."""
    n = 0
    for i, v in enumerate(values):
        hist = [h for h in values[max(0, i - window):i] if math.isfinite(h)]
        if not math.isfinite(v):
            n += 1
            continue
        if len(hist) < min_history:
            continue
        mean = sum(hist) / len(hist)
        std = math.sqrt(sum((h - mean) ** 2 for h in hist) / len(hist))
        n += v > mean + sigmas * std
    return n


def summarize_probes(rows: list[dict]) -> dict:
    """Stability summary of a run's metrics rows (metrics.jsonl), for summary.json.

    Keys (absent when the run logged no such metric): loss_spikes, grad_norm_spikes,
    {grad_norm, max_attn_logit, logit_rms, attn_logit_rms, moe_imbalance, moe_router_z}_{max,final},
    moe_router_entropy_{min,final}, and update_rel_final / act_rms_final (dicts: the last probe row's
    probe/update_rel/* by role and probe/act_rms/* by module), eps_dominance_{final,max} by role and
    wd_tau_tokens_{min,final} by role (min: the stable phase's timescale) when the probes logged them.
    """
    def series(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None and not isinstance(r[key], list)]

    out: dict = {}
    loss = series("train_loss")
    if loss:
        out["loss_spikes"] = count_spikes(loss)
    sources = {"grad_norm": "grad_norm", "max_attn_logit": "probe/max_attn_logit", "logit_rms": "probe/logit_rms",
               "attn_logit_rms": "probe/attn_logit_rms", "moe_imbalance": "moe/imbalance",
               "moe_router_z": "moe/router_z"}
    for name, key in sources.items():
        s = series(key)
        if s:
            finite = [v for v in s if math.isfinite(v)]
            out[f"{name}_max"] = max(finite) if finite else math.inf
            out[f"{name}_final"] = s[-1]
    gn = series("grad_norm")
    if gn:
        out["grad_norm_spikes"] = count_spikes(gn)
    ent = series("moe/router_entropy")
    if ent:
        out["moe_router_entropy_min"], out["moe_router_entropy_final"] = min(ent), ent[-1]
    probe_rows = [r for r in rows if any(k.startswith("probe/") for k in r)]
    if probe_rows:
        last = probe_rows[-1]

        def by_role(row: dict, prefix: str) -> dict:
            return {k.split("/", 2)[2]: v for k, v in row.items() if k.startswith(f"probe/{prefix}/")}

        out["update_rel_final"] = by_role(last, "update_rel")
        out["act_rms_final"] = by_role(last, "act_rms")
        eps = [by_role(r, "eps_dominance") for r in probe_rows]
        if any(eps):
            out["eps_dominance_final"] = eps[-1]
            out["eps_dominance_max"] = {k: max(e.get(k, 0.0) for e in eps) for k in eps[-1]}
        taus = [by_role(r, "wd_tau_tokens") for r in probe_rows]
        if any(taus):
            # the smallest tau is the stable phase's (the LR is at its peak); it grows as the LR decays
            out["wd_tau_tokens_min"] = {k: min(t[k] for t in taus if k in t) for k in taus[-1]}
            out["wd_tau_tokens_final"] = taus[-1]
    return out
