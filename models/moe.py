"""Mixture-of-Experts layer: fp32 softmax top-k router, dropless sorted dispatch,
and pluggable expert kernels (a per-expert loop reference, PyTorch's grouped GEMM and
megablocks' grouped GEMM).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lrscale.parametrization import Parametrization, Role, role_param

from .kernels import Kernel, lookup, warn_once
from .config import ModelConfig
from .layers import SwiGLU, silu_gate


# ---- expert kernels ------------------------------------------------------------------
# Each takes tokens sorted by expert, x (n, d), the per-expert counts (E,), and the
# stacked weights w_in (E, d, 2*de), w_out (E, de, d); it returns (n, d). The loop is
# the reference (kept beside the fast paths for comparison, as torchtitan does); the
# others must match it forward and backward (tests/test_model.py, tests/test_backends.py).

def loop_experts(x: torch.Tensor, counts: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """Reference: one matmul pair per expert over its contiguous slice of tokens."""
    outs, start = [], 0
    for e, n in enumerate(counts.tolist()):
        xe = x[start:start + n]
        gate, up = (xe @ w_in[e]).chunk(2, dim=-1)
        outs.append((F.silu(gate) * up) @ w_out[e])
        start += n
    return torch.cat(outs, dim=0)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (grouped_mm needs it)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        return x

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


def grouped_mm_fn() -> Callable | None:
    fn = getattr(F, "grouped_mm", None)  # public since torch 2.12
    return fn if fn is not None else getattr(torch, "_grouped_mm", None)  # torch 2.8-2.11


def _gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the expert GEMMs run in: autocast's when it is on (grouped GEMMs are on
    no autocast cast list, so without this they would see fp32 master weights), else x's."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


# Grouped GEMM kernels address each group through TMA, which needs 16-byte aligned
# addresses. Where groups split the reduction dimension (the weight gradient, x^T @ dy)
# that means every group's row count a multiple of 16 bytes, and CUTLASS takes no empty
# group there. Recent torch picks a layout that avoids both; older torch asserted them
# for every group (aten/src/ATen/native/cuda/GroupMMCommon.cuh, pytorch PR 155466).
# Padding each group makes either safe.
GROUP_ALIGN_BYTES = 16


def padded_group_layout(counts: torch.Tensor, n: int, align: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where each sorted row goes when every expert's group is padded to a multiple of
    `align` rows, at least `align` (so empty experts get a group of zero rows too).

    Returns dest (n,) row indices into the padded buffer, offs (E,) int32 group ends,
    and the padded length. The length is the static bound n + E*align (rounded up), so
    nothing waits on the device; the last group absorbs the slack, so every row of the
    buffer belongs to some group and is written (grouped_mm leaves rows past offs[-1]
    uninitialised).
    """
    E = counts.numel()
    sizes = (counts.clamp_min(1) + align - 1) // align * align        # (E,) padded group sizes
    ends, packed_ends = sizes.cumsum(0), counts.cumsum(0)
    n_pad = -(-(n + E * align) // align) * align
    shift = (ends - sizes) - (packed_ends - counts)                     # padded start - packed start
    row = torch.arange(n, device=counts.device)
    expert_of_row = torch.searchsorted(packed_ends, row, right=True)    # (n,) expert of each sorted row
    dest = row + shift[expert_of_row]
    offs = torch.cat([ends[:-1], ends.new_full((1,), n_pad)]).to(torch.int32)
    return dest, offs, n_pad


def grouped_mm_experts(x: torch.Tensor, counts: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
                       align: int | None = None) -> torch.Tensor:
    """All experts in two grouped GEMMs (no per-expert Python loop, no host sync).

    On CUDA, rows are scattered into a zero-padded buffer whose groups start 16-byte aligned
    (`align` rows; default 16 bytes of the GEMM dtype: 8 rows in bf16); padding rows are
    zero in, zero out and add nothing to the weight gradients. `align=1` skips padding,
    the default on the CPU, whose grouped GEMM (a GEMM per group) needs no alignment:
    there the scatter and gather would be two passes over the routed rows for nothing.
    """
    gmm = grouped_mm_fn()
    dt = _gemm_dtype(x)
    x = x.to(dt)
    n, d = x.shape
    if align is None:
        align = GROUP_ALIGN_BYTES * 8 // torch.finfo(dt).bits if x.is_cuda else 1
    if align > 1:
        dest, offs, n_pad = padded_group_layout(counts, n, align)
        x = x.new_zeros(n_pad, d).index_copy(0, dest, x)  # (n_pad, d)
    else:
        offs = counts.cumsum(0).to(torch.int32)
    h = _ContiguousGrad.apply(gmm(x.contiguous(), w_in.to(dt), offs=offs))  # (n_pad, 2*de)
    a = silu_gate(h)  # silu(gate) * up, (n_pad, de)
    y = _ContiguousGrad.apply(gmm(a, w_out.to(dt), offs=offs))  # (n_pad, d)
    return y.index_select(0, dest) if align > 1 else y


def _megablocks_gmm() -> Callable:
    """grouped_gemm's gmm as megablocks ships it, else the standalone grouped_gemm package."""
    try:
        from megablocks import grouped_gemm_util as gg
        if gg.grouped_gemm_is_available():
            return gg.ops.gmm
    except ImportError:
        pass
    from grouped_gemm import ops
    return ops.gmm


def megablocks_experts(x: torch.Tensor, counts: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """megablocks' grouped GEMM (Gale et al., arXiv 2211.15841) for the two expert GEMMs
    only: routing and dispatch stay ours. Its group sizes live on the host (one sync)."""
    gmm = _megablocks_gmm()
    dt = _gemm_dtype(x)
    sizes = counts.cpu()  # int64 on the host, as grouped_gemm wants
    h = gmm(x.to(dt).contiguous(), w_in.to(dt), sizes)  # (n, 2*de)
    gate, up = h.chunk(2, dim=-1)
    return gmm((F.silu(gate) * up).contiguous(), w_out.to(dt), sizes)  # (n, d)


def _grouped_mm_build(device: torch.device, dtype: torch.dtype) -> str | None:
    """torch's grouped GEMM: present since 2.8 (torch._grouped_mm), public since 2.12. On CUDA,
    torch 2.8 runs it on sm90 only; from 2.9 it also runs elsewhere, but off sm90/sm100 through a
    fallback with a host sync per GEMM (aten/src/ATen/native/cuda/Blas.cpp, _grouped_mm_allowed_device):
    allowed, with a warning, since megablocks or the loop may then be faster."""
    if grouped_mm_fn() is None:
        return f"needs torch >= 2.8 (torch._grouped_mm); this is {torch.__version__}"
    if device.type != "cuda":
        return None
    cap = torch.cuda.get_device_capability(device)
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    fast = cap == (9, 0) or cap[0] == 10
    if version < (2, 9) and cap != (9, 0):
        return f"needs an sm90 GPU with torch {version[0]}.{version[1]} (this GPU is sm{cap[0]}{cap[1]})"
    if not fast:
        warn_once(f"hardware.expert_backend=grouped_mm on sm{cap[0]}{cap[1]}: torch runs it through a fallback "
                  "with a host sync per GEMM; hardware.expert_backend=megablocks (or loop) may be faster here")
    return None


EXPERT_KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("loop", loop_experts, "expert", "one matmul pair per expert (the reference)"),
    Kernel("grouped_mm", grouped_mm_experts, "expert", "all experts in two grouped GEMMs, no host sync",
           cuda_dtypes=(torch.bfloat16,), min_capability=(8, 0), width_multiple=8,
           compile_dtypes=(torch.bfloat16,), runtime=_grouped_mm_build,
           alternatives="hardware.expert_backend=loop"),
    Kernel("megablocks", megablocks_experts, "expert", "megablocks' grouped GEMM (group sizes on the host)",
           package="grouped_gemm", install="pip install megablocks (or just its kernels: pip install grouped_gemm)",
           alternatives="hardware.expert_backend=grouped_mm (PyTorch's own grouped GEMM) or loop",
           devices=("cuda",), cuda_dtypes=(torch.bfloat16,), min_capability=(8, 0), width_multiple=8),
)}


# ---- router ----------------------------------------------------------------------------

@dataclass
class Routing:
    expert_idx: torch.Tensor   # (n, k) chosen experts per token
    weights: torch.Tensor      # (n, k) gate weights, fp32: sum to 1 per token for k > 1, the softmax prob for k = 1
    probs: torch.Tensor        # (n, E) softmax router probabilities, fp32
    logits: torch.Tensor       # (n, E) router logits, fp32


class Router(nn.Module):
    """Softmax top-k router in fp32. Gates: the chosen probabilities renormalised to sum 1 for
    top_k > 1 (Mixtral), the softmax probability itself for top_k = 1 (Switch, arXiv 2101.03961).

    Balance by a Switch-style auxiliary loss (Fedus et al., arXiv 2101.03961) or by the
    auxiliary-loss-free bias of DeepSeek-V3 (arXiv 2412.19437): a per-expert bias that
    only affects *which* experts are chosen, nudged towards balance after each step.
    """

    def __init__(self, cfg: ModelConfig, param: Parametrization):
        super().__init__()
        self.num_experts, self.top_k = cfg.moe.num_experts, cfg.moe.top_k
        self.weight = role_param(torch.empty(self.num_experts, cfg.d_model), Role.ROUTER)
        self.mult = param.router_mult
        self.aux_free = cfg.moe.balance == "aux_free"
        self.register_buffer("bias", torch.zeros(self.num_experts))  # persistent: part of the state

    def forward(self, x: torch.Tensor) -> Routing:
        # fp32 even inside a bf16 autocast region (autocast would run this matmul in bf16).
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())  # (n, E)
            if self.mult != 1.0:  # x * 1.0 == x: no pass for nothing
                logits = logits * self.mult
        probs = logits.softmax(dim=-1)
        scores = probs + self.bias if self.aux_free else probs
        _, idx = scores.topk(self.top_k, dim=-1)
        w = probs.gather(-1, idx)
        if self.top_k > 1:  # Mixtral: the chosen gates renormalised to sum 1
            w = w / w.sum(-1, keepdim=True)
        # top-1 keeps its softmax probability (Switch Transformer): renormalised it would be 1 for
        # every token, and the router would learn from the load-balance loss alone
        return Routing(idx, w, probs, logits)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, param: Parametrization, backend: str):
        super().__init__()
        m, d, de = cfg.moe, cfg.d_model, cfg.expert_width
        self.num_experts, self.top_k = m.num_experts, m.top_k
        self.aux_loss_coef, self.z_loss_coef = m.aux_loss_coef, m.z_loss_coef
        self.bias_update_rate = m.bias_update_rate
        self.router = Router(cfg, param)
        self.w_in = role_param(torch.empty(m.num_experts, d, 2 * de), Role.EXPERT_IN)
        self.w_out = role_param(torch.empty(m.num_experts, de, d), Role.EXPERT_OUT)
        self.shared = SwiGLU(d, de) if m.shared_expert else None
        self.experts = lookup(EXPERT_KERNELS, "expert", backend).fn
        # Assignments per expert since the last bias update, filled by the training step from the
        # forward's statistics (record_load): forward itself changes no state, so a compiled and
        # activation-checkpointed block is one graph, and evaluation never moves the bias.
        self.register_buffer("load", torch.zeros(m.num_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x: (B, T, d) -> (output (B, T, d), weighted auxiliary loss scalar, routing statistics:
        tokens_per_expert, imbalance, load_balance_loss, router_z, router_entropy; no grad)."""
        B, T, d = x.shape
        flat = x.reshape(-1, d)                                   # (n, d)
        r = self.router(flat)
        n, k, E = flat.shape[0], self.top_k, self.num_experts

        # Dropless dispatch: sort the n*k (token, expert) assignments by expert.
        expert_of = r.expert_idx.reshape(-1)                      # (n*k,)
        order = expert_of.argsort(stable=True)
        token_of = order // k                                      # source token of each sorted row
        # A static-size count: bincount's data-dependent output size breaks torch.compile graphs.
        counts = expert_of.new_zeros(E).scatter_add_(0, expert_of, torch.ones_like(expert_of))  # (E,)
        y_sorted = self.experts(flat[token_of], counts, self.w_in, self.w_out)  # (n*k, d)
        gates = r.weights.reshape(-1)[order].unsqueeze(-1).to(y_sorted.dtype)
        # Under autocast the experts return bf16 while the residual stream stays fp32.
        out = torch.zeros_like(flat).index_add_(0, token_of, (y_sorted * gates).to(flat.dtype))
        if self.shared is not None:
            out = out + self.shared(flat)

        aux, stats = self._aux_losses(r, counts, n)
        return out.view(B, T, d), aux, stats

    def _aux_losses(self, r: Routing, counts: torch.Tensor, n: int) -> tuple[torch.Tensor, dict]:
        E, k = self.num_experts, self.top_k
        frac_tokens = counts.float() / (n * k)                  # f_e: share of assignments
        mean_prob = r.probs.mean(0)                               # P_e
        lb = E * (frac_tokens * mean_prob).sum()                  # Switch: = 1 when balanced
        z = torch.logsumexp(r.logits, dim=-1).pow(2).mean()      # ST-MoE z-loss
        with torch.no_grad():
            stats = {"tokens_per_expert": counts.detach(),
                     "imbalance": counts.max().float() / counts.float().mean(),
                     "load_balance_loss": lb.detach(),
                     "router_z": z.detach(),
                     "router_entropy": -(r.probs * r.probs.clamp_min(1e-12).log()).sum(-1).mean()}
        aux = self.z_loss_coef * z
        if not self.router.aux_free:
            aux = aux + self.aux_loss_coef * lb
        return aux, stats

    @torch.no_grad()
    def record_load(self, stats: dict[str, torch.Tensor]) -> None:
        """Count a training forward's assignments towards the next bias update."""
        self.load += stats["tokens_per_expert"].float()

    @torch.no_grad()
    def update_router_bias(self) -> None:
        """DeepSeek-V3 balancing: raise the bias of under-loaded experts, lower over-loaded ones
        (nothing moves without recorded load: sign(0) = 0). No host sync."""
        if self.router.aux_free:
            self.router.bias += self.bias_update_rate * torch.sign(self.load.mean() - self.load)
        self.load.zero_()
