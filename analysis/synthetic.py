"""A synthetic sweep drawn from a known law, in the results.jsonl schema.

Used by the tests (does the library recover what was put in?) and to dry-run the
analysis before real sweeps exist. Ground truth:

    η*(N, D)   = c · N^α · D^β                          (the form of Eq. 6)
    L_min(N,D) = E + A/N^a + B/D^b                      (Chinchilla form, Hoffmann et
                                                         al. 2022, arXiv 2203.15556)
    L(N, D, η) = L_min + C·(ln η − ln η*)² + noise      (the form of Eq. 2)

N is the active non-embedding count; the other two N kinds are derived from it with a
fixed embedding size and expert count, so only n_active_nonembed follows the law exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticTruth:
    c: float = 100.0
    alpha: float = -0.25
    beta: float = -0.35
    curvature: float = 0.05
    # Chinchilla's fitted constants (Hoffmann et al. 2022, Eq. 10 fit).
    E: float = 1.69
    A: float = 406.4
    a: float = 0.34
    B: float = 410.7
    b: float = 0.28

    def eta_star(self, N, D):
        return self.c * np.asarray(N, float) ** self.alpha * np.asarray(D, float) ** self.beta

    def loss(self, N, D, lr):
        N, D, lr = (np.asarray(v, float) for v in (N, D, lr))
        l_min = self.E + self.A / N ** self.a + self.B / D ** self.b
        return l_min + self.curvature * (np.log(lr) - np.log(self.eta_star(N, D))) ** 2


def synthetic_rows(sizes=(2e6, 5e6, 1.2e7, 3e7, 7e7), budgets=(1e8, 2e8, 4e8, 8e8), *,
                   lr_steps=(-3, -2, -1, 0, 1, 2, 3), diverge_steps=(), noise: float = 0.002,
                   seed: int = 0, truth: SyntheticTruth = SyntheticTruth(),
                   fingerprint: str = "synthetic-v1", decay_frac: float = 0.2) -> list[dict]:
    """Rows of a WSD decay-branch sweep: one run per (size, LR), one row per budget.

    LRs are factor-2 steps (`lr_steps`) around η* at the geometric-mean budget, as the
    protocol asks (PAPER.md §2); steps in `diverge_steps` produce diverged rows (loss
    null). run_flops counts the stable phase to (1 − decay_frac)·D_max plus a decay
    branch of decay_frac·D per budget, at 6·N_active FLOPs per token.
    """
    rng = np.random.default_rng(seed)
    d_mid = math.exp(np.mean(np.log(budgets)))
    rows = []
    for i, N in enumerate(sizes):
        n_nonembed = int(N)
        d_model = int(64 * round((n_nonembed / 12 / 4) ** (1 / 3) / 8)) or 64
        n_embed = 2 * 32000 * d_model
        n_active = n_nonembed + n_embed
        n_total = 4 * n_nonembed + n_embed
        flops_per_token = 6.0 * n_active
        stable_tokens = (1 - decay_frac) * max(budgets)
        run_flops = flops_per_token * (stable_tokens + decay_frac * sum(budgets))
        center = float(truth.eta_star(N, d_mid))
        for step in (*lr_steps, *diverge_steps):
            lr = center * 2.0 ** step
            run_id = f"s{i}-lr{step:+d}"
            for branch, D in enumerate(budgets):
                diverged = step in diverge_steps
                loss = None if diverged else float(truth.loss(N, D, lr)
                                                   + noise * rng.standard_normal())
                batch_tokens = 65536
                rows.append({
                    "run_id": run_id, "config_hash": f"h{i}{step:+d}",
                    "status": "diverged" if diverged else "ok", "model": f"syn{i}",
                    "parametrization": "sp", "n_total": n_total, "n_active": n_active,
                    "n_active_nonembed": n_nonembed, "d_model": d_model, "n_layers": 4,
                    "num_experts": 8, "top_k": 2, "lr": lr, "tokens": int(D),
                    "steps": int(D) // batch_tokens, "branch": branch, "val_loss": loss,
                    "flops": flops_per_token * D, "run_flops": run_flops,
                    "wall_time_s": 1.0, "batch_tokens": batch_tokens, "seed": 0,
                    "error": "loss became NaN" if diverged else None,
                    "data_fingerprint": fingerprint})
    return rows
