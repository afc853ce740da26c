"""Synthetic transfer studies with planted answers, written in the sweep-directory format the
training stack writes (results.jsonl, runs/<run_id>/config.yaml and metrics.jsonl). The tests
check that the transfer analyses recover what was planted; the same studies dry-run the notebooks
before real campaigns exist.

Every loss follows the form of Eq. 2 (arXiv 2601.05049), L = L_min + C (ln eta - ln eta*)^2
(+ optional Gaussian noise); what moves eta* (width, depth, experts, horizon, weight decay) is the
planted answer:
  planted_transfer   eta*(size) = eta_base * (size / size_0)^s per variant, s in log2 per doubling
  planted_horizon    eta*(D) = eta_0 * (D / D_0)^-beta, one run per LR with a row per budget
  planted_wd         eta* and tau* = 1/(eta lambda) in tokens as power laws of width and D per variant;
                     L = L_min + C_eta (ln eta - ln eta*)^2 + C_tau (ln tau - ln tau*)^2
  planted_ablation   (eta*, L_min, C) per variant at one width
`synthetic_metrics` writes train and probe rows with planted width slopes of activation RMS and
relative updates, and an optional loss spike.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np

BATCH_TOKENS = 512
ROLES = ("embedding", "attn_qkv", "attn_out", "expert_in", "expert_out", "router", "unembedding")
MODULES = ("embed", "block0/attn", "block0/ffn", "block0")


def result_row(run_id: str, *, parametrization: str, lr: float, val_loss: float | None, status: str = "ok",
               d_model: int = 64, n_layers: int = 2, num_experts: int = 4, top_k: int = 2, tokens: int = 81920,
               branch: int = 0, peak_lr: float | None = None, batch_tokens: int = BATCH_TOKENS) -> dict:
    """One results.jsonl row (every column of analysis.results.REQUIRED_COLUMNS)."""
    n = d_model * d_model * 12 * n_layers
    return {"run_id": run_id, "config_hash": run_id[-10:], "status": status, "model": f"w{d_model}_l{n_layers}",
            "parametrization": parametrization, "n_total": n * 2, "n_active": n, "n_active_nonembed": n // 2,
            "d_model": d_model, "n_layers": n_layers, "num_experts": num_experts, "top_k": top_k, "lr": lr,
            "peak_lr": lr if peak_lr is None else peak_lr, "tokens": tokens, "steps": tokens // batch_tokens,
            "branch": branch, "val_loss": val_loss if status == "ok" else None, "flops": 6.0 * n * tokens,
            "run_flops": 6.0 * n * tokens, "wall_time_s": 1.0, "batch_tokens": batch_tokens, "seed": 0,
            "error": None, "data_fingerprint": "synthetic"}


def _nest(flat: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict = {}
    for key, value in flat.items():
        d = out
        *parents, leaf = key.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
    return out


def write_sweep(sweep_dir: str | Path, rows: list[dict], *, configs: dict[str, dict] | None = None,
                metrics: dict[str, list[dict]] | None = None) -> Path:
    """results.jsonl, plus runs/<id>/config.yaml (from flat dotted-key dicts) and metrics.jsonl."""
    from omegaconf import OmegaConf
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for run_id, flat in (configs or {}).items():
        (sweep_dir / "runs" / run_id).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(_nest(flat)), sweep_dir / "runs" / run_id / "config.yaml")
    for run_id, ms in (metrics or {}).items():
        (sweep_dir / "runs" / run_id).mkdir(parents=True, exist_ok=True)
        (sweep_dir / "runs" / run_id / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in ms))
    return sweep_dir


def quadratic_loss(lr: float, eta_star: float, *, L_min: float = 4.0, C: float = 0.1) -> float:
    return L_min + C * (math.log(lr) - math.log(eta_star)) ** 2


def lr_grid(centre: float, n: int = 7) -> list[float]:
    """n LRs spaced by 2 centred on `centre`."""
    return [centre * 2.0 ** (k - (n - 1) / 2) for k in range(n)]


def schedule(step: int, steps: int, warmup: int, decay_start: int) -> float:
    """WSD factor: linear warmup, flat, linear decay to 0 (the shape of the real runs)."""
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    return max(0.0, (steps - step) / (steps - decay_start))


def synthetic_metrics(*, width: int, lr: float, base_width: int = 32, steps: int = 200, log_every: int = 10,
                      probe_every: int = 20, act_slope: float = 0.0, update_slope: float = 0.0,
                      spike_at: int | None = None, eps_dominance: float | None = None, wd: float | None = None,
                      batch_tokens: int = BATCH_TOKENS, seed: int = 0) -> list[dict]:
    """metrics.jsonl rows of one run: train rows every `log_every` steps (train_loss, lr, grad_norm,
    router stats) and probe rows every `probe_every` steps whose act_rms / update_rel scale as
    (width / base_width)^slope. A loss spike of +20 nats at step `spike_at`. eps_dominance: a
    constant fraction per role; wd: coupled lambda, giving tau = 1/(lr(t) wd) (inf at lr 0)."""
    rng = np.random.default_rng(seed)
    m = width / base_width
    warmup, decay_start = steps // 10, int(steps * 0.8)
    rows = []
    for step in range(log_every, steps + 1, log_every):
        f = schedule(step, steps, warmup, decay_start)
        loss = 4.0 + 3.0 * math.exp(-step / (steps / 4)) + 0.01 * rng.standard_normal()
        if spike_at is not None and step == spike_at:
            loss += 20.0
        rows.append({"step": step, "tokens": step * batch_tokens, "train_loss": loss, "lr": lr * f,
                     "grad_norm": 0.5 + 0.01 * rng.standard_normal(), "moe/imbalance": 1.5, "moe/router_z": 2.0,
                     "moe/tokens_per_expert": [1, 2, 3, 4]})
        if step % probe_every == 0:
            f_upd = f * (1 + 0.001 * step)  # the update shrinks with the LR; the width slope stays planted
            probe = {"step": step, "probe/logit_rms": 1.0 + 0.1 * m, "probe/max_attn_logit": 2.0 * m,
                     "probe/attn_logit_rms": 0.5}
            probe.update({f"probe/act_rms/{mod}": (0.1 + 0.05 * i) * m ** act_slope
                          for i, mod in enumerate(MODULES)})
            probe.update({f"probe/update_rel/{r}": (0.01 + 0.002 * i) * f_upd * m ** update_slope
                          for i, r in enumerate(ROLES)})
            if eps_dominance is not None:
                probe.update({f"probe/eps_dominance/{r}": eps_dominance for r in ROLES})
            if wd is not None:
                tau = math.inf if f * lr * wd == 0 else 1.0 / (f * lr * wd)
                probe.update({f"probe/wd_tau_steps/{r}": tau for r in ROLES})
                probe.update({f"probe/wd_tau_tokens/{r}": tau * batch_tokens for r in ROLES})
            rows.append(probe)
    rows.append({"step": steps, "tokens": steps * batch_tokens, "val_loss": 4.2})
    return rows


def _cfg(parametrization: str, lr: float, d_model: int, extra: dict | None = None) -> dict:
    return {"parametrization.name": parametrization, "parametrization.depth_alpha": 0.0,
            "parametrization.base_d_model": 32, "parametrization.wd_convention": "none",
            "optim.lr": lr, "optim.weight_decay": 0.0, "optim.weight_decay_mode": "coupled",
            "optim.wd_timescale_tokens": 0.0, "model.d_model": d_model, **(extra or {})}


def planted_transfer(sweep_dir, *, axis: str = "d_model", sizes: Iterable = (32, 64, 128, 256),
                     drift: dict[str, float] | None = None, variant_config: dict[str, dict] | None = None,
                     eta_base: float = 1e-2, n_lrs: int = 7, noise: float = 0.0, seed: int = 0,
                     diverge: Iterable[tuple[str, object]] = (), metrics: bool = False,
                     slopes: dict[str, tuple[float, float]] | None = None,
                     spike: tuple[str, object] | None = None) -> Path:
    """Variants (name -> log2 drift of eta* per doubling of the axis); losses on LRs spaced by 2
    around eta_base. axis: a results column or a dotted config key. diverge: (variant, size) pairs
    whose largest LR diverged. metrics: write metrics.jsonl (probes with `slopes[variant]` =
    (act_rms slope, update_rel slope) vs width; `spike` = (variant, size) gets a loss spike)."""
    drift = drift or {"sp": -1.0, "mup": 0.0}
    variant_config = variant_config or {}
    slopes = slopes or {"sp": (0.5, 0.0), "mup": (0.0, -0.5)}
    rng = np.random.default_rng(seed)
    sizes = list(sizes)
    rows, configs, mets = [], {}, {}
    for variant, s in drift.items():
        extra = variant_config.get(variant, {})
        parametrization = extra.get("parametrization.name", variant)
        for size in sizes:
            eta = eta_base * (size / sizes[0]) ** s
            for lr in lr_grid(eta_base, n_lrs):
                run_id = f"{variant}-{axis}{size}-lr{lr:.4g}"
                status = "diverged" if (variant, size) in set(diverge) and lr == lr_grid(eta_base, n_lrs)[-1] else "ok"
                loss = quadratic_loss(lr, eta) + noise * rng.standard_normal()
                cols = {a: size for a in ("d_model", "n_layers", "num_experts", "top_k") if a == axis}
                rows.append(result_row(run_id, parametrization=parametrization, lr=lr, val_loss=loss, status=status,
                                       **cols))
                configs[run_id] = _cfg(parametrization, lr, cols.get("d_model", 64),
                                       {**extra, **({axis: size} if "." in axis else {})})
                if metrics:
                    act, upd = slopes.get(variant, (0.0, 0.0))
                    mets[run_id] = synthetic_metrics(width=int(size), lr=lr, act_slope=act, update_slope=upd,
                                                     spike_at=100 if spike == (variant, size) else None,
                                                     eps_dominance=0.0, wd=0.1)
    return write_sweep(sweep_dir, rows, configs=configs, metrics=mets)


def planted_horizon(sweep_dir, *, beta: float = 0.35, budgets: Iterable[int] = (40960, 81920, 163840, 327680, 655360),
                    eta0: float = 1e-2, n_lrs: int = 9, noise: float = 0.0, seed: int = 0,
                    parametrization: str = "mup") -> Path:
    """One model, one run per LR with a decay-branch row per budget; eta*(D) = eta0 (D/D0)^-beta."""
    rng = np.random.default_rng(seed)
    budgets = sorted(budgets)
    D0 = budgets[0]
    grid = lr_grid(eta0 * (budgets[-1] / D0) ** (-beta / 2), n_lrs)  # centred on the middle of the drift
    rows, configs = [], {}
    for lr in grid:
        run_id = f"{parametrization}-lr{lr:.4g}"
        for k, D in enumerate(budgets):
            eta = eta0 * (D / D0) ** (-beta)
            loss = quadratic_loss(lr, eta, L_min=4.0 + 2.0 * (D / D0) ** -0.3) + noise * rng.standard_normal()
            rows.append(result_row(run_id, parametrization=parametrization, lr=lr, val_loss=loss, tokens=D, branch=k))
        configs[run_id] = _cfg(parametrization, lr, 64, {"optim.horizon_beta": 0.0})
    return write_sweep(sweep_dir, rows, configs=configs)


def tau_tokens_of(mode: str, eta: float, decay: float, batch_tokens: int = BATCH_TOKENS) -> float:
    """Nominal EMA timescale in tokens for unit multipliers (analysis/weight_decay.py)."""
    if mode == "coupled":
        return batch_tokens / (eta * decay)
    if mode == "independent":
        return batch_tokens / decay
    return decay


def planted_wd(sweep_dir, *, variants: dict[str, dict] | None = None, widths: Iterable[int] = (32, 64, 128),
               budgets: Iterable[int] = (40960, 163840), n_lrs: int = 5, n_decays: int = 7,
               C_eta: float = 0.1, C_tau: float = 0.05, noise: float = 0.0, seed: int = 0) -> Path:
    """(eta, decay) grids per variant, width and budget (one run per (eta, decay) and width, a row
    per budget). variants: label -> {mode, convention, eta0, eta_slope (per doubling of width),
    tau0 (tokens), tau_width_slope, tau_D_slope}: the planted optimum is
    eta* = eta0 (w/w0)^eta_slope and tau* = tau0 (w/w0)^tau_width_slope (D/D0)^tau_D_slope.
    The decay grid (lambda, or tau in timescale mode) is centred on the optimum at the middle width."""
    rng = np.random.default_rng(seed)
    variants = variants or {
        "coupled_none": {"mode": "coupled", "convention": "none", "eta0": 1e-2, "eta_slope": 0.0,
                         "tau0": 4e5, "tau_width_slope": 0.0, "tau_D_slope": 1.0},
        "independent": {"mode": "independent", "convention": "none", "eta0": 1e-2, "eta_slope": 0.0,
                        "tau0": 4e5, "tau_width_slope": 0.0, "tau_D_slope": 0.0},
        "timescale": {"mode": "timescale", "convention": "none", "eta0": 1e-2, "eta_slope": 0.0,
                      "tau0": 4e5, "tau_width_slope": 0.5, "tau_D_slope": 0.0}}
    widths, budgets = list(widths), sorted(budgets)
    rows, configs = [], {}
    for label, v in variants.items():
        w_mid = widths[len(widths) // 2]
        eta_mid = v["eta0"] * (w_mid / widths[0]) ** v["eta_slope"]
        tau_mid = v["tau0"] * (w_mid / widths[0]) ** v["tau_width_slope"]
        if v["mode"] == "coupled":
            decay_c = BATCH_TOKENS / (eta_mid * tau_mid)
        elif v["mode"] == "independent":
            decay_c = BATCH_TOKENS / tau_mid
        else:
            decay_c = tau_mid
        for w in widths:
            eta_star = v["eta0"] * (w / widths[0]) ** v["eta_slope"]
            for lr in lr_grid(eta_mid, n_lrs):
                for decay in lr_grid(decay_c, n_decays):
                    run_id = f"{label}-w{w}-lr{lr:.4g}-wd{decay:.4g}"
                    for k, D in enumerate(budgets):
                        tau_star = (v["tau0"] * (w / widths[0]) ** v["tau_width_slope"]
                                    * (D / budgets[0]) ** v["tau_D_slope"])
                        tau = tau_tokens_of(v["mode"], lr, decay)
                        loss = (4.0 + C_eta * (math.log(lr / eta_star)) ** 2 + C_tau * (math.log(tau / tau_star)) ** 2
                                + noise * rng.standard_normal())
                        rows.append(result_row(run_id, parametrization="mup", lr=lr, val_loss=loss, d_model=w,
                                               tokens=D, branch=k))
                    configs[run_id] = _cfg("mup", lr, w, {
                        "optim.weight_decay_mode": v["mode"], "parametrization.wd_convention": v["convention"],
                        "optim.weight_decay": decay if v["mode"] != "timescale" else 0.0,
                        "optim.wd_timescale_tokens": decay if v["mode"] == "timescale" else 0.0})
    return write_sweep(sweep_dir, rows, configs=configs)


def planted_ablation(sweep_dir, *, variants: dict[str, tuple[float, float, float]] | None = None,
                     lrs: Iterable[float] | None = None, d_model: int = 256,
                     diverge_above: float | None = None, spike: str | None = None) -> Path:
    """One width; variants name -> (eta*, L_min, C); runs above `diverge_above` diverge. With `spike`
    (a variant name) every run logs synthetic metrics and probes, and that variant's runs a loss spike
    at step 100."""
    variants = variants or {"sp": (4e-3, 4.30, 0.20), "sp_mup_lr": (1e-2, 4.25, 0.12), "mup": (1e-2, 4.20, 0.08)}
    lrs = list(lrs or lr_grid(6e-3, 7))
    rows, configs, mets = [], {}, {}
    for name, (eta, L_min, C) in variants.items():
        for lr in lrs:
            run_id = f"{name}-lr{lr:.4g}"
            status = "diverged" if diverge_above is not None and lr > diverge_above else "ok"
            rows.append(result_row(run_id, parametrization=name, lr=lr, status=status, d_model=d_model,
                                   val_loss=quadratic_loss(lr, eta, L_min=L_min, C=C)))
            configs[run_id] = _cfg(name, lr, d_model)
            if spike is not None:
                mets[run_id] = synthetic_metrics(width=d_model, lr=lr, spike_at=100 if name == spike else None,
                                                 eps_dominance=0.0, wd=0.1)
    return write_sweep(sweep_dir, rows, configs=configs, metrics=mets)
