"""Cheap training probes, logged every `train.probe_every` steps.

Names (all under `probe/`):
  act_rms/<module>     RMS of each block's residual-stream output and of the logits
  max_attn_logit       largest pre-softmax attention logit q.k*scale over layers (stability; Wortsman et al.,
                       arXiv 2309.14322, attribute loss spikes to growing attention logits)
  logit_rms            RMS of the output logits
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def run_probes(core: nn.Module, x: torch.Tensor, ctx) -> dict:
    was = core.training
    core.eval()
    out: dict[str, float] = {}
    h = torch.nn.functional.embedding(x.to(ctx.device), core.embed) * core.input_mult
    max_logit = -float("inf")
    with ctx.autocast:
        for i, block in enumerate(core.blocks):
            q, k, _ = block.attn.qkv(block.attn_norm(h))
            rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(rep, dim=1) if rep > 1 else k
            logits = (q.float() @ k.float().transpose(-2, -1)) * block.attn.scale
            T = logits.shape[-1]
            causal = torch.ones(T, T, dtype=torch.bool, device=logits.device).tril()
            max_logit = max(max_logit, float(logits.masked_fill(~causal, -float("inf")).max()))
            h, _ = block(h)
            out[f"probe/act_rms/block{i}"] = float(h.float().pow(2).mean().sqrt())
        logits = core.unembed(core.final_norm(h)) * core.output_mult
    out["probe/max_attn_logit"] = max_logit
    out["probe/logit_rms"] = float(logits.float().pow(2).mean().sqrt())
    core.train(was)
    return out
