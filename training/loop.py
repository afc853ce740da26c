"""The pieces of the training loop: the train state, one optimizer step, evaluation,
divergence checks and MoE statistics. Each is a plain function; decay branches are in
training/branches.py, checkpoints in training/checkpoint.py."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
import torch
from torch import nn

from lrscale.optim import GroupLR

from . import distributed



@dataclass
class TrainState:
    """Everything beyond model/optimizer/loader needed to continue a run exactly."""
    step: int = 0
    tokens: int = 0                   # tokens of the main run so far
    branch_tokens: int = 0            # tokens spent in decay branches so far
    initial_loss: float | None = None
    best_val_loss: float = math.inf
    last_val_loss: float | None = None
    wall_time_s: float = 0.0
    status: str = "running"           # running | completed | diverged | interrupted | failed
    branches: list = field(default_factory=list)  # finished decay-branch results

    def advance(self, loss, tokens_per_step: int) -> None:
        """One optimizer step done. The first step's loss (read once, a float) is what divergence
        is measured against; later losses are not read here."""
        self.step, self.tokens = self.step + 1, self.tokens + tokens_per_step
        if self.initial_loss is None:
            self.initial_loss = float(loss)

    def record_eval(self, val_loss: float) -> None:
        self.last_val_loss = val_loss
        self.best_val_loss = min(self.best_val_loss, val_loss)


@dataclass
class StepContext:
    """What one optimizer step needs besides the batch."""
    model: nn.Module                  # possibly wrapped (DDP/FSDP/compiled)
    core: nn.Module                   # the unwrapped Transformer
    optimizer: torch.optim.Optimizer
    schedule: GroupLR
    autocast: object
    device: torch.device
    micro_batch_size: int
    grad_clip: float


def train_step(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, step: int) -> dict:
    """One optimizer step on a (per-rank) batch, with gradient accumulation.

    Nothing here waits for the device: the loss, the auxiliary loss and the gradient norm come
    back as 0-d tensors (the global batch's means under torchrun), with the last micro-batch's
    MoE routing statistics; the loop reads them once per logging step (GPU steps then queue
    back to back instead of stalling on a `.item()` per micro-batch)."""
    lr_factor = ctx.schedule.apply(step)
    ctx.optimizer.zero_grad(set_to_none=True)
    mb = ctx.micro_batch_size or x.shape[0]
    if x.shape[0] % mb:
        raise ValueError(f"train.micro_batch_size={mb} does not divide the per-rank batch of {x.shape[0]} rows "
                         "(train.batch_size / number of ranks); pick a divisor")
    chunks = list(zip(x.split(mb), y.split(mb)))
    losses = torch.zeros(2, dtype=torch.float32, device=ctx.device)  # (lm loss, aux loss), summed over chunks
    for i, (xm, ym) in enumerate(chunks):
        xm, ym = xm.to(ctx.device, non_blocking=True), ym.to(ctx.device, non_blocking=True)
        sync = i == len(chunks) - 1
        with _maybe_no_sync(ctx.model, sync), ctx.autocast:
            out = ctx.model(xm, ym)
            loss = (out.loss + out.aux_loss) / len(chunks)
        loss.backward()
        losses += torch.stack([out.loss.detach().float(), out.aux_loss.detach().float()]) / len(chunks)
        ctx.core.record_load(out.moe_stats)  # routing counts for the DeepSeek-V3 bias (aux_free balancing)
    losses = distributed.mean_across_ranks_(losses)  # the global batch's loss
    clip = ctx.grad_clip if ctx.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.core.parameters(), clip)  # DTensors (FSDP2) included
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    ctx.optimizer.step()
    # DeepSeek-V3 bias balancing reacts to the load of the whole global batch, as on one process.
    distributed.sum_across_ranks_([m.load for m in ctx.core.moe_layers()])
    ctx.core.update_router_biases()
    return {"loss": losses[0], "aux_loss": losses[1], "grad_norm": grad_norm.detach(), "lr_factor": lr_factor,
            "moe_stats": out.moe_stats}


def _maybe_no_sync(model: nn.Module, sync: bool):
    """Skip the gradient reduction on all but the last micro-batch (DDP, FSDP2)."""
    import contextlib
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: a flag, not a context
        model.set_requires_gradient_sync(sync)
    elif not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, batches: list, device: torch.device, autocast) -> float:
    """Mean validation cross-entropy over fixed batches (this rank's rows of them; the
    mean over ranks makes it the whole batches' loss, the same on every rank)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast:
            total += float(model(x.to(device), y.to(device)).loss)
    model.train(was_training)
    return distributed.mean_across_ranks([total / len(batches)])[0]


def divergence_flag(loss: torch.Tensor, initial_loss: float | None, factor: float) -> torch.Tensor:
    """`diverged` on the device, for a flag the loop ORs in every step and reads when it logs."""
    bad = ~torch.isfinite(loss)
    if initial_loss is not None:
        bad = bad | (loss > factor * initial_loss)
    return bad


def moe_stats(layers: list[dict]) -> dict:
    """Routing statistics of one forward (train_step's "moe_stats"), averaged over MoE layers."""
    if not layers:
        return {}
    mean = lambda k: float(torch.stack([s[k] for s in layers]).float().mean())  # noqa: E731
    return {
        "moe/imbalance": mean("imbalance"),
        "moe/imbalance_max": max(float(s["imbalance"]) for s in layers),
        "moe/load_balance_loss": mean("load_balance_loss"),
        "moe/router_z": mean("router_z"),
        "moe/router_entropy": mean("router_entropy"),
        "moe/tokens_per_expert": torch.stack([s["tokens_per_expert"] for s in layers]).sum(0).tolist(),
    }
