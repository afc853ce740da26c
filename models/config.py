"""Typed model configs that know their own parameter counts and FLOPs.

Counting here must agree with the built model exactly (tests/test_model.py checks it),
so sweeps can be planned and laws fitted against N without building anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def _round_up(x: float, multiple: int) -> int:
    return int(-(-int(round(x)) // multiple) * multiple)


@dataclass
class MoEConfig:
    num_experts: int = 0          # 0 = dense model (plain SwiGLU MLP in every block)
    top_k: int = 2
    d_expert: int = 0             # hidden width of one expert; 0 = same as the dense d_ff
    shared_expert: bool = False   # one always-on expert of width d_expert beside the routed ones
    balance: str = "aux_loss"     # "aux_loss" (Switch, arXiv 2101.03961) | "aux_free" (DeepSeek-V3 bias, arXiv 2412.19437)
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0      # router z-loss (ST-MoE, arXiv 2202.08906); 0 = off
    bias_update_rate: float = 1e-3  # aux_free only: step of the per-expert routing bias
    first_dense_layers: int = 0   # leading blocks that keep a dense MLP


@dataclass
class ModelConfig:
    name: str = "custom"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0           # 0 = n_heads (no grouped-query attention)
    d_ff: int = 0                 # SwiGLU hidden width; 0 = 8/3 * d_model rounded up to a multiple of 32
    vocab_size: int = 4096
    seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived shapes -------------------------------------------------------------
    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_width(self) -> int:
        return int(self.widths_at(self.d_model)["d_ff"])

    @property
    def expert_width(self) -> int:
        return int(self.widths_at(self.d_model)["d_expert"])

    def widths_at(self, d_model: float, d_ff: float = 0, d_expert: float = 0) -> dict[str, float]:
        """The widths every matrix's fan-in is made of, for this model family at width `d_model`.

        At this config's own d_model these are its real widths. Elsewhere (the muP base shape,
        parametrization/mup.py) a derived d_ff (0: 8/3 d_model rounded up to a multiple of 32) is
        derived again; a d_ff set by hand is taken to grow in proportion to d_model unless `d_ff`
        says what it is there. d_expert likewise (0: it follows d_ff).
        """
        scale = d_model / self.d_model
        ffn = d_ff or (self.d_ff * scale if self.d_ff else _round_up(8 * d_model / 3, 32))
        expert = d_expert or (self.moe.d_expert * scale if self.moe.d_expert else ffn)
        return {"d_model": d_model, "d_ff": ffn, "d_expert": expert}

    @property
    def is_moe(self) -> bool:
        return self.moe.num_experts > 0

    def layer_is_moe(self, layer: int) -> bool:
        return self.is_moe and layer >= self.moe.first_dense_layers

    def validate(self) -> None:
        """Reject impossible shapes at config time, naming the field to change."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"model config '{self.name}': {msg}")

        for f in ("d_model", "n_layers", "n_heads", "vocab_size", "seq_len"):
            need(getattr(self, f) > 0, f"model.{f} must be positive, got {getattr(self, f)}")
        need(self.d_model % self.n_heads == 0,
             f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model}")
        need(self.d_head % 2 == 0, f"head size d_model/n_heads={self.d_head} must be even for RoPE")
        # Before the divisibility check: n % -1 == 0, so a negative count would pass it.
        need(self.n_kv_heads >= 0, f"model.n_kv_heads={self.n_kv_heads} must be >= 0 "
             "(0 = n_heads, no grouped-query attention)")
        need(self.n_heads % self.kv_heads == 0,
             f"model.n_kv_heads={self.kv_heads} must divide model.n_heads={self.n_heads}")
        need(self.d_ff >= 0, f"model.d_ff={self.d_ff} must be >= 0 (0 = 8/3 * d_model)")
        need(self.rope_theta > 0, f"model.rope_theta={self.rope_theta} must be positive (10000 is the default)")
        need(self.norm_eps > 0, f"model.norm_eps={self.norm_eps} must be positive (1e-5 is the default)")
        m = self.moe
        need(m.num_experts >= 0, f"model.moe.num_experts={m.num_experts} must be >= 0 (0 = dense)")
        need(m.d_expert >= 0, f"model.moe.d_expert={m.d_expert} must be >= 0 (0 = the dense d_ff)")
        for name in ("aux_loss_coef", "z_loss_coef", "bias_update_rate"):
            need(getattr(m, name) >= 0, f"model.moe.{name}={getattr(m, name)} must be >= 0 (0 = off)")
        if m.num_experts > 0:
            need(1 <= m.top_k <= m.num_experts,
                 f"model.moe.top_k={m.top_k} must be between 1 and model.moe.num_experts={m.num_experts}")
            need(m.balance in ("aux_loss", "aux_free"),
                 f"model.moe.balance='{m.balance}' is unknown; valid: aux_loss, aux_free")
            need(0 <= m.first_dense_layers < self.n_layers,
                 f"model.moe.first_dense_layers={m.first_dense_layers} must be < n_layers={self.n_layers}")

    # ---- parameter counts (must match the built model) -------------------------------
    def _attn_params(self) -> int:
        d, hd = self.d_model, self.d_head
        return d * (self.n_heads * hd) + 2 * d * (self.kv_heads * hd) + (self.n_heads * hd) * d

    def _block_params(self, layer: int, active: bool) -> int:
        d = self.d_model
        norms = 2 * d
        if not self.layer_is_moe(layer):
            return norms + self._attn_params() + 3 * d * self.ffn_width
        m, de = self.moe, self.expert_width
        experts = (m.top_k if active else m.num_experts) * 3 * d * de
        shared = 3 * d * de if m.shared_expert else 0
        router = d * m.num_experts
        return norms + self._attn_params() + experts + shared + router

    def param_counts(self) -> dict[str, int]:
        """Total, active (per token) and active non-embedding parameter counts.

        Embedding and unembedding are untied; 'non-embedding' drops both, as in
        Kaplan et al. (arXiv 2001.08361). Routing buffers are not parameters.
        """
        emb = self.vocab_size * self.d_model
        blocks_total = sum(self._block_params(i, active=False) for i in range(self.n_layers))
        blocks_active = sum(self._block_params(i, active=True) for i in range(self.n_layers))
        final_norm = self.d_model
        return {
            "n_total": 2 * emb + blocks_total + final_norm,
            "n_active": 2 * emb + blocks_active + final_norm,
            "n_active_nonembed": blocks_active + final_norm,
        }

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x (active matmul params) + attention scores.

        Matmul params are the active non-embedding ones plus the unembedding (the
        embedding lookup is no matmul). Attention adds 6 * L * seq_len * d_model
        (QK^T and AV, forward + backward, causal half counted: PaLM, arXiv 2204.02311,
        App. B counts 12*L*d*T without the causal half).
        """
        c = self.param_counts()
        matmul_params = c["n_active_nonembed"] + self.vocab_size * self.d_model
        attn = 6 * self.n_layers * self.seq_len * self.n_heads * self.d_head
        return 6.0 * matmul_params + attn
