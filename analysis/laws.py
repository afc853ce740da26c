"""Published learning-rate laws to compare our Eq. 6 fit against (PAPER.md §4).

Every law is written as η* = k · N^α · D^β so that exponents line up with ours. The
constants are *not* comparable across papers: units of N (total / active /
non-embedding parameters) and D, the batch size, the optimizer settings, the data and
the tokenizer all differ. Compare exponents (`compare_exponents`) and curve shapes
(`rescale_law` pins a law through one of our measured optima), never raw constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PublishedLaw:
    """η* = coefficient · N^alpha · D^beta.

    alpha is None when the law says nothing about N (then predict ignores N).
    coefficient is nan when the law fixes only a slope (Bjorck et al.): anchor it
    with `rescale_law` or `bjorck_law(eta_ref, d_ref)` before predicting.
    """
    name: str
    coefficient: float
    alpha: float | None
    beta: float
    formula: str
    citation: str
    assumptions: str

    def predict(self, N, D) -> np.ndarray:
        if not math.isfinite(self.coefficient):
            raise ValueError(f"{self.name} has no published constant; anchor it first with "
                             f"rescale_law(law, N_ref, D_ref, eta_ref)")
        N = np.asarray(N, dtype=float)
        D = np.asarray(D, dtype=float)
        alpha = 0.0 if self.alpha is None else self.alpha
        return self.coefficient * N ** alpha * D ** self.beta


# arXiv 2601.05049 (Zhou et al. 2026), Eq. 6, R² ≈ 0.962; units of N, D unknown.
ZHOU_2026 = PublishedLaw(
    name="Zhou et al. 2026 (this paper)", coefficient=38.4588, alpha=-0.2219, beta=-0.3509,
    formula="38.4588·N^-0.2219·D^-0.3509",
    citation="Zhou, Xing, Huang, Qiu, Guo. How to Set the Learning Rate for Large-Scale "
             "Pre-training? arXiv 2601.05049, Eq. 6",
    assumptions="MoE, WSD schedule; units of N and D and total vs active N not stated")

# DeepSeek LLM (arXiv 2401.02954), η_opt = 0.3118·C^−0.125 with C ≈ 6ND (PAPER.md §4),
# so k = 0.3118·6^−0.125 and α = β = −0.125.
DEEPSEEK_LLM = PublishedLaw(
    name="DeepSeek LLM", coefficient=0.3118 * 6.0 ** -0.125, alpha=-0.125, beta=-0.125,
    formula="0.3118·C^-0.125, C = 6ND",
    citation="DeepSeek-AI. DeepSeek LLM: Scaling Open-Source Language Models with "
             "Longtermism. arXiv 2401.02954, §3.1",
    assumptions="dense; batch size also grows with C (B_opt = 0.292·C^0.3271); the paper "
                "counts compute as non-embedding FLOPs/token × D, here C = 6ND")

# Step Law (arXiv 2503.04715): η* = 1.79·N^−0.713·D^0.307 at its own B* = 0.58·D^0.571.
STEP_LAW = PublishedLaw(
    name="Step Law", coefficient=1.79, alpha=-0.713, beta=0.307,
    formula="1.79·N^-0.713·D^0.307",
    citation="Li et al. Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in "
             "Large Language Model Pretraining (Step Law). arXiv 2503.04715",
    assumptions="assumes its own optimal batch B = 0.58·D^0.571 tokens; the positive D "
                "exponent comes from batch growing with D, so at fixed batch compare only "
                "its N exponent")

# Bjorck et al. (arXiv 2409.19913): η* ∝ D^−0.32 at fixed model; no constant, no N term.
BJORCK_2024 = PublishedLaw(
    name="Bjorck et al.", coefficient=float("nan"), alpha=None, beta=-0.32,
    formula="η* ∝ D^-0.32",
    citation="Bjorck et al. Scaling Optimal LR Across Token Horizons. arXiv 2409.19913",
    assumptions="token-horizon slope at fixed model size; the anchor (η at some D) is "
                "supplied by the caller")

PUBLISHED_LAWS = {"zhou2026": ZHOU_2026, "deepseek": DEEPSEEK_LLM, "steplaw": STEP_LAW,
                  "bjorck": BJORCK_2024}


def bjorck_law(eta_ref: float, d_ref: float, beta: float = -0.32) -> PublishedLaw:
    """Bjorck et al.'s horizon law anchored at (d_ref, eta_ref): η*(D) = eta_ref·(D/d_ref)^β."""
    return replace(BJORCK_2024, coefficient=eta_ref * d_ref ** -beta, beta=beta)


def rescale_law(law: PublishedLaw, N_ref: float, D_ref: float, eta_ref: float) -> PublishedLaw:
    """The law with its constant replaced so that it passes through (N_ref, D_ref, eta_ref).

    Only the exponents (the shape) of a published law carry over to our setup; the
    constant absorbs units, batch size, data and optimizer differences. Use this to
    draw published laws next to our optima, pinned at one of our measured optima.
    """
    alpha = 0.0 if law.alpha is None else law.alpha
    k = eta_ref / (N_ref ** alpha * D_ref ** law.beta)
    return replace(law, name=f"{law.name} (rescaled)", coefficient=float(k))


def choose_reference_point(N, D, eta_star) -> tuple[float, float, float]:
    """The measured optimum nearest the centre of the data in (ln N, ln D): a point
    inside the fitted range to pin rescaled laws on (an end point would exaggerate
    exponent differences at the other end)."""
    N, D, eta = (np.asarray(v, dtype=float) for v in (N, D, eta_star))
    lnN, lnD = np.log(N), np.log(D)
    span = lambda v: max(v.max() - v.min(), 1e-12)  # noqa: E731
    dist = ((lnN - lnN.mean()) / span(lnN)) ** 2 + ((lnD - lnD.mean()) / span(lnD)) ** 2
    i = int(np.argmin(dist))
    return float(N[i]), float(D[i]), float(eta[i])


def compare_exponents(law_fit, laws: dict | None = None) -> pd.DataFrame:
    """Our Eq. 6 exponents next to each published law's.

    law_fit: an `analysis.fitting.LawFit` (alpha = N exponent, beta = D exponent, with
    bootstrap CIs). Returns one row per law: its exponents, ours minus its, and whether
    its exponent lies in our CI. Constants are deliberately left out (see module doc).
    """
    laws = PUBLISHED_LAWS if laws is None else laws
    rows = [{"law": "ours (this sweep)", "formula": "c·N^α·D^β", "alpha_N": law_fit.alpha,
             "beta_D": law_fit.beta, "alpha_ci": tuple(law_fit.alpha_ci),
             "beta_ci": tuple(law_fit.beta_ci), "d_alpha": 0.0, "d_beta": 0.0,
             "alpha_in_our_ci": None, "beta_in_our_ci": None, "assumptions": "",
             "citation": ""}]

    def inside(v, ci):
        return bool(ci[0] <= v <= ci[1]) if all(math.isfinite(x) for x in ci) else None

    for law in laws.values():
        a = law.alpha
        rows.append({"law": law.name, "formula": law.formula,
                     "alpha_N": float("nan") if a is None else a, "beta_D": law.beta,
                     "alpha_ci": None, "beta_ci": None,
                     "d_alpha": float("nan") if a is None else law_fit.alpha - a,
                     "d_beta": law_fit.beta - law.beta,
                     "alpha_in_our_ci": None if a is None else inside(a, law_fit.alpha_ci),
                     "beta_in_our_ci": inside(law.beta, law_fit.beta_ci),
                     "assumptions": law.assumptions, "citation": law.citation})
    return pd.DataFrame(rows)
