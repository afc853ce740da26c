"""Batches from a 1-D token array: a pure function of (seed, step, rank).

The stream is cut into non-overlapping windows of seq_len+1 tokens (inputs plus
the one-token-shifted targets). Epoch e visits the windows in a permutation drawn
from SeedSequence([seed, e]); the epochs' orders are concatenated, and global
batch `step` is positions [step*B, (step+1)*B) of that sequence. Rank r gets the
r-th contiguous slice of the B rows. Hence:
  * ranks are disjoint and their union is exactly the world_size=1 batch,
    so changing the number of GPUs does not change the data a step sees;
  * resuming needs only (seed, step): no iterator state, no worker processes.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch


def _gather(tokens: np.ndarray, window_ids: np.ndarray, window: int) -> Tuple[torch.Tensor, torch.Tensor]:
    idx = window_ids[:, None] * window + np.arange(window)   # (b, T+1) positions in the stream
    rows = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))  # fancy indexing copies out of the memmap
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()   # x, y: (b, T)


def _as_tokens(tokens) -> np.ndarray:
    tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array of token ids, got shape {tokens.shape}")
    return tokens


class TokenLoader:
    def __init__(self, tokens, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        """batch_size is the GLOBAL batch; each rank gets batch_size // world_size rows."""
        self.tokens = _as_tokens(tokens)
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be positive")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if batch_size % world_size != 0:
            raise ValueError(
                f"batch_size={batch_size} (global) is not divisible by world_size={world_size}; "
                f"use a multiple of {world_size}"
            )
        if seed < 0:
            raise ValueError(f"seed={seed} must be non-negative")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = batch_size // world_size
        self.window = seq_len + 1
        self.n_windows = len(self.tokens) // self.window
        if self.n_windows < batch_size:
            raise ValueError(
                f"{len(self.tokens):,} tokens are too few for one batch: {batch_size} windows of "
                f"seq_len+1={self.window} need {batch_size * self.window:,} tokens. "
                "Use more data, a smaller batch_size or a shorter seq_len."
            )
        self.step = 0
        self._perms: Dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> float:
        return self.n_windows / self.batch_size

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            # SeedSequence([seed, epoch]) gives independent, platform-stable streams per epoch.
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
        return self._perms[epoch]

    def window_ids(self, step: int) -> np.ndarray:
        """Indices of the windows that make up this rank's rows of global batch `step`."""
        if step < 0:
            raise ValueError(f"step={step} must be non-negative")
        start = step * self.batch_size + self.rank * self.local_batch
        pos = np.arange(start, start + self.local_batch, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.n_windows)
        out = np.empty(self.local_batch, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[offsets[sel]]
        return out

    def batch(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x, y) LongTensors of shape (batch_size // world_size, seq_len); y is x shifted by one token."""
        return _gather(self.tokens, self.window_ids(step), self.window)

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        missing = {"seed", "step"} - set(state)
        if missing:
            raise KeyError(f"loader state lacks {sorted(missing)}; expected the dict from TokenLoader.state_dict()")
        if self.seed != int(state["seed"]):
            self._perms.clear()  # permutations belong to the old seed
        self.seed, self.step = int(state["seed"]), int(state["step"])


def val_batches(tokens, seq_len: int, batch_size: int, n_batches: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: batch_size * n_batches windows spread evenly over the split.

    Evenly spaced rather than the first windows, so the estimate covers the whole
    split; fixed, so every eval of every run sees the same tokens.
    """
    tokens = _as_tokens(tokens)
    if seq_len < 1 or batch_size < 1 or n_batches < 1:
        raise ValueError(f"seq_len={seq_len}, batch_size={batch_size}, n_batches={n_batches} must be positive")
    window = seq_len + 1
    n_windows = len(tokens) // window
    need = batch_size * n_batches
    if n_windows < need:
        raise ValueError(
            f"the validation split has {len(tokens):,} tokens ({n_windows} windows of seq_len+1={window}); "
            f"{n_batches} batches of {batch_size} need {need * window:,}. Lower n_batches or batch_size, "
            "or raise data.val_fraction / use more data"
        )
    ids = (np.arange(need, dtype=np.int64) * n_windows) // need   # distinct, evenly spaced, starts at 0
    x, y = _gather(tokens, ids, window)
    return list(zip(x.split(batch_size), y.split(batch_size)))
