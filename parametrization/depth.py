"""Depth rules (PAPER.md Sec. 3, "Depth"): residual branches x (L0/L)^alpha, with the
learning-rate and Adam-epsilon corrections that keep the optimum fixed as L changes.

alpha = 1 is CompleteP (Dey et al., arXiv 2505.01618), alpha = 1/2 is Depth-muP (Yang et al.,
arXiv 2310.02244), alpha = 0 switches every depth rule off (plain SP / plain muP).
With the depth multiplier m_L = L / L0 (L0 = parametrization.base_n_layers):

  residual branch     x m_L^-alpha            CompleteP Table 1; nanoGPT-mup `residual_scaling`
  in-block LR         x m_L^(alpha - 1)       CompleteP Table 1 (Adam); = 1 for alpha = 1
  in-block Adam eps   x m_L^-alpha            CompleteP Eq. 40 (eps follows the gradient scale, which
                                              carries the branch multiplier; nanoGPT-mup `hidden_adam_eps`)
  output-proj. init   GPT-2's 1/sqrt(2L) uses L0, not L: init is depth-independent (CompleteP: the
                      depth dependence lives in the branch multiplier only)

"In-block" parameters are those inside a residual branch whose contribution is scaled by the
branch multiplier: the hidden matrices and [ours] the MoE router (its gradient carries the
branch multiplier like the experts'). Embedding, unembedding and norm gains are left alone:
the model gives block norms and the final norm the same role, so the CompleteP rule for block
norm gains (LR x m_L^(alpha-1), eps x m_L^-alpha) is not applied; for alpha = 1 only their eps
would change, which is negligible next to their gradients.
"""
from __future__ import annotations

from .base import HIDDEN_ROLES, Role
from .config import ParametrizationConfig

# Parameters inside a residual branch whose optimizer settings follow the depth rules.
IN_BLOCK_ROLES = HIDDEN_ROLES | {Role.ROUTER}


class DepthRules:
    """The depth part of a parametrization; the identity when depth_alpha = 0."""

    def __init__(self, cfg: ParametrizationConfig, n_layers: int):
        self.alpha = cfg.depth_alpha
        self.base_n_layers = cfg.base_n_layers
        self.enabled = cfg.depth_alpha > 0.0
        self.mult = n_layers / cfg.base_n_layers if self.enabled else 1.0   # m_L = L / L0

    @property
    def residual_mult(self) -> float:
        return self.mult ** -self.alpha            # CompleteP Table 1: branch x L^-alpha

    def lr_factor(self, role: Role) -> float:
        return self.mult ** (self.alpha - 1.0) if role in IN_BLOCK_ROLES else 1.0  # CompleteP Table 1

    def eps_factor(self, role: Role) -> float:
        return self.mult ** -self.alpha if role in IN_BLOCK_ROLES else 1.0         # CompleteP Eq. 40

    def init_layers(self, n_layers: int) -> int:
        """The L of GPT-2's 1/sqrt(2L) output-projection init: L0 under depth rules."""
        return self.base_n_layers if self.enabled else n_layers
