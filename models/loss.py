"""The language-model loss: mean cross-entropy of the unembedding logits
(h W^T) * output_mult against the targets, with pluggable kernels.

    reference   materialise the (N, V) logits, F.cross_entropy on them in fp32 (plain PyTorch)
    chunked     the same loss and gradients, a chunk of rows at a time: never holds the
                full logits, their fp32 copy or their gradient (tests/test_model.py)

Why chunked: at N = B*T rows and vocabulary V the reference allocates several (N, V)
buffers per step (logits, their log-softmax, the gradient of each), 32 MiB each for the
CPU presets and gigabytes at GPU vocabularies (32k-150k). With glibc's default malloc each
is mapped and page-faulted afresh every step (33k faults, 15% of a CPU step in the kernel,
benchmarks/README.md), and their passes (log-softmax, its backward, the zero-filled one-hot
gradient) stream from memory. The chunked kernel computes the gradients of h and W in the
forward pass while each chunk's logits are in cache (as Liger-Kernel's fused linear
cross-entropy does, arXiv 2410.10989); its backward only scales them by the incoming
gradient. Per chunk: the logits matmul, a row max, one in-place exp, row sums, and the two
gradient matmuls, with the softmax normalisation, the one-hot and the multiplier applied to
the (c, d) operands instead of passes over (c, V). The matmuls are the reference's; with the
allocator tuned (training/hardware.py: tune_allocator) the CPU time of the two is on par.

Shapes: N rows (B*T), d model width, V vocabulary, c rows per chunk.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # F.cross_entropy's default: targets equal to it count for nothing


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give the unembedding matmul (F.linear), else h's."""
    device_type = h.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else h.dtype


def reference_lm_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mult: float,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Reference: logits (N, V) = F.linear(h, W) * mult in the matmul's dtype, then
    F.cross_entropy in fp32. h (N, d), weight (V, d), targets (N,)."""
    logits = F.linear(h, weight)
    if mult != 1.0:  # x * 1.0 == x exactly: skipping it only saves a pass over (N, V)
        logits = logits * mult
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)


def default_chunk_rows(n: int, d: int, vocab: int) -> int:
    """Rows per chunk, a power of two: the chunk's fp32 logits at least as large as h itself
    (N*d elements: big matmuls at GPU shapes, as Liger-Kernel sizes them) and at least 2 MB,
    about a CPU core's L2, where the passes over them stay (CPU presets: 128 rows of 4096)."""
    rows = max(-(-n * d // vocab), (2 << 20) // (4 * vocab), 1)
    return min(n, 1 << (rows - 1).bit_length())


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (h W^T) * mult over chunks of rows; gradients made in forward."""

    @staticmethod
    def forward(ctx, h, weight, targets, mult: float, ignore_index: int, chunk_rows: int, dtype: torch.dtype,
                grad_enabled: bool):
        # h (N, d), weight (V, d), targets (N,). Autocast is off in here: `dtype` is what it
        # would have given the matmuls (bf16 or fp32), applied explicitly; softmax in fp32.
        # Grad mode is always off inside forward, so the caller's comes in `grad_enabled`:
        # evaluation under no_grad makes no gradients.
        N, d = h.shape
        need_dh, need_dw = (grad_enabled and ctx.needs_input_grad[i] for i in (0, 1))
        need_grad = need_dh or need_dw
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)                                    # (V, d)
            valid = targets != ignore_index                         # (N,)
            tgt = targets.masked_fill(~valid, 0).unsqueeze(1)       # (N, 1): ignored rows point at class 0
            keep = valid.unsqueeze(1).to(torch.float32)             # (N, 1): 1 counted, 0 ignored
            loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
            dh = torch.empty(N, d, dtype=torch.float32, device=h.device) if need_dh else None  # every row written
            dw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_dw else None
            for s in range(0, N, chunk_rows):
                e = min(s + chunk_rows, N)
                hc = h[s:e].float()                                 # (c, d)
                a = hc * mult if mult != 1.0 else hc                # the multiplier on (c, d), not (c, V)
                lf = (a.to(dtype) @ w.t()).float()                  # (c, V) logits; no copy in fp32
                xt = lf.gather(1, tgt[s:e])                         # (c, 1) target logit
                m = lf.amax(1, keepdim=True)                        # (c, 1)
                p = lf.sub_(m).exp_()                               # (c, V) exp(logit - max), in place
                z = p.sum(1, keepdim=True)                          # (c, 1); logsumexp = m + log z
                loss_sum += ((m + z.log() - xt) * keep[s:e]).sum()
                if not need_grad:
                    continue
                # d(row loss)/d logits = p / z - one_hot(target), times mult for d/d(h W^T). The
                # row scale r and the one-hot go to the (c, d) operands, never a pass over (c, V).
                r = keep[s:e] * mult / z                            # (c, 1), 0 on ignored rows
                pd = p.to(dtype)
                if need_dh:
                    dh[s:e] = (pd @ w).float() * r - w[tgt[s:e, 0]].float() * (keep[s:e] * mult)
                if need_dw:
                    hr = (hc * r).to(dtype)
                    if dtype == torch.float32:
                        dw.addmm_(pd.t(), hr)                       # (V, d), accumulated in place
                    else:
                        dw += (pd.t() @ hr).float()
                    dw.index_add_(0, tgt[s:e, 0], hc * (-mult * keep[s:e]))
        n_valid = keep.sum()
        if need_grad:
            ctx.save_for_backward(dh, dw, n_valid)
            ctx.dtypes = h.dtype, weight.dtype
        return loss_sum / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw, n_valid = ctx.saved_tensors
        scale = grad_loss / n_valid
        return (None if dh is None else (dh * scale).to(ctx.dtypes[0]),
                None if dw is None else (dw * scale).to(ctx.dtypes[1]), None, None, None, None, None, None)


def chunked_lm_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mult: float,
                    ignore_index: int = IGNORE_INDEX, chunk_rows: int | None = None) -> torch.Tensor:
    """The reference's loss and gradients without ever materialising the (N, V) logits.
    h (N, d), weight (V, d), targets (N,); chunk_rows defaults to default_chunk_rows."""
    n, d = h.shape
    rows = chunk_rows or default_chunk_rows(n, d, weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(h, weight, targets, float(mult), ignore_index, rows,
                                            _compute_dtype(h), torch.is_grad_enabled())


LOSS_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": reference_lm_loss,
    "chunked": chunked_lm_loss,
}


def get_loss_backend(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSS_BACKENDS:
        raise ValueError(f"loss backend '{name}' is unknown; valid: {', '.join(LOSS_BACKENDS)}")
    return LOSS_BACKENDS[name]
