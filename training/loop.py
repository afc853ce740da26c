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

    def advance(self, loss: float, tokens_per_step: int) -> None:
        """One optimizer step done; the first loss is what divergence is measured against."""
        self.step, self.tokens = self.step + 1, self.tokens + tokens_per_step
        if self.initial_loss is None:
            self.initial_loss = loss

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
    """One optimizer step on a (per-rank) batch, with gradient accumulation."""
    lr_factor = ctx.schedule.apply(step)
    ctx.optimizer.zero_grad(set_to_none=True)
    mb = ctx.micro_batch_size or x.shape[0]
    if x.shape[0] % mb:
        raise ValueError(f"train.micro_batch_size={mb} does not divide the per-rank batch of {x.shape[0]} rows "
                         "(train.batch_size / number of ranks); pick a divisor")
    chunks = list(zip(x.split(mb), y.split(mb)))
    loss_sum = aux_sum = 0.0
    for i, (xm, ym) in enumerate(chunks):
        xm, ym = xm.to(ctx.device, non_blocking=True), ym.to(ctx.device, non_blocking=True)
        sync = i == len(chunks) - 1
        with _maybe_no_sync(ctx.model, sync), ctx.autocast:
            out = ctx.model(xm, ym)
            loss = (out.loss + out.aux_loss) / len(chunks)
        loss.backward()
        loss_sum += out.loss.detach().float().item() / len(chunks)
        aux_sum += float(out.aux_loss.detach()) / len(chunks)
    loss_sum, aux_sum = distributed.mean_across_ranks([loss_sum, aux_sum])  # the global batch's loss
    clip = ctx.grad_clip if ctx.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.core.parameters(), clip)  # DTensors (FSDP2) included
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    ctx.optimizer.step()
    # DeepSeek-V3 bias balancing reacts to the load of the whole global batch, as on one process.
    distributed.sum_across_ranks_([m.load for m in ctx.core.moe_layers()])
    ctx.core.update_router_biases()
    return {"loss": loss_sum, "aux_loss": aux_sum, "grad_norm": grad_norm, "lr_factor": lr_factor}


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


def diverged(loss: float, state: TrainState, factor: float) -> bool:
    """Not finite, or far above where the run started."""
    if not math.isfinite(loss):
        return True
    return state.initial_loss is not None and loss > factor * state.initial_loss


def moe_stats(core: nn.Module) -> dict:
    """Router statistics of the last forward, averaged over MoE layers."""
    layers = [m.stats for m in core.moe_layers() if m.stats]
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
