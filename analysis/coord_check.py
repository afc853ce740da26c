"""Coordinate check (PAPER.md Sec. 5, figure 6): do activation and update sizes stay put as
the model widens (or deepens)?

Trains a tiny dense or MoE transformer for a few AdamW steps at several widths (or depths)
under each parametrization, and after every step measures, on one fixed probe batch:
  act_rms      RMS of each module's output (training/probes.py names: embed, block{i}/attn,
               block{i}/ffn, block{i}, attn_logits{i}, logits)
  update_rms   RMS of (output now - output at init): how far training moved the features
  rel_frob     ||W - W_0||_F / ||W_0||_F per role         (relative weight update)
  rel_spec     mean over the role's matrices of ||W - W_0||_2 / ||W_0||_2 (spectral; experts count
               as separate matrices). muP's claim is about this one (Yang, Simon & Bernstein,
               arXiv 2310.17813): flat in width under muP, growing like sqrt(m) under SP.
It then fits the slope of log(size) against log(width) per module (seeds averaged first).

Verdict (pass/fail table, printed and in coord_check.json):
  width  `flat`: every module's update_rms slope is in [-tol_below, tol] (default [-0.5, 0.25];
         asymmetric because muP's finite-width corrections decay like width^-1/2, see DEFAULT_TOL);
         attention logits only must not grow (slope <= tol): early in training their change is
         dominated by the cross terms q_0.dk + dq.k_0, which shrink like d_head^-1/2 under muP's
         1/d_head scale (the reason TP-V, App. D.2, zero-initialises the query; our q, k, v share
         one fused matrix, so the query cannot be zeroed alone).
         muP must pass; SP must fail: with one LR at every width, Adam's hidden updates grow ~ m
         per layer (TP-V Sec. 1).
  depth  `bounded`: the final residual stream's act_rms and update_rms slopes vs log L are
         <= tol. CompleteP (depth_alpha=1) must pass; no depth rules (depth_alpha=0) grows.
The mup library's coord check (mup/coord_check.py) is the model for the idea; this one is
written for our models and parametrization protocol.

    python -m analysis.coord_check --out runs/coord_check                     # SP and muP, MoE, widths
    python -m analysis.coord_check --model dense --widths 32 64 128 256 512
    python -m analysis.coord_check --depths 2 4 8 16 --width 64 --parametrization mup
    python -m analysis.coord_check --data embedded                            # corpus tokens ($LRSCALE_CACHE)

Outputs in --out: coord_check.json (records, slopes, verdicts), coord_check.png.
Exit code 0 when every variant gets the verdict it is expected to get (muP / depth_alpha>0:
pass; SP without depth rules: fail), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lrscale.models import ModelConfig, MoEConfig, Transformer
from lrscale.optim import OptimConfig, build_optimizer
from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights, param_table
from lrscale.training.probes import block_activations

# Flat = slope of log size vs log width in [-DEFAULT_TOL_BELOW, DEFAULT_TOL]. Asymmetric on purpose:
# muP's finite-width corrections shrink like width^-1/2 and still show at widths of 32-512 trained on
# a few tokens (updates of rank r look like noise until width >> r), while a wrong parametrization
# grows (SP: slope >= 1 for hidden modules) or collapses (slope <= -1, e.g. an LR / m^2 rule).
DEFAULT_TOL = 0.25
DEFAULT_TOL_BELOW = 0.5


@dataclass
class CoordCheckConfig:
    parametrizations: list[str] = field(default_factory=lambda: ["sp", "mup"])
    model: str = "moe"                  # dense | moe
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    depths: list[int] = field(default_factory=list)   # non-empty: a depth check at `width`
    width: int = 64                     # depth check: the fixed width
    n_layers: int = 2                   # width check: the fixed depth
    n_heads: int = 2                    # fixed: d_head grows with width, so the 1/d_head rule matters
    depth_alphas: list[float] = field(default_factory=list)  # [] = [0] (width) or [0, 0.5, 1] (depth)
    steps: int = 4
    lr: float = 1e-2
    batch_size: int = 2                 # B*T tokens: a few times fewer than the smallest width (see measure)
    seq_len: int = 16
    vocab_size: int = 64
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data: str = "random"                # random | embedded
    tol: float = DEFAULT_TOL            # largest slope that is flat (and, depth: bounded)
    tol_below: float = DEFAULT_TOL_BELOW  # width: most negative slope that is flat
    threads: int = 1

    @property
    def axis(self) -> str:
        return "depth" if self.depths else "width"

    @property
    def sizes(self) -> list[int]:
        return sorted(self.depths or self.widths)

    @property
    def alphas(self) -> list[float]:
        return self.depth_alphas or ([0.0, 0.5, 1.0] if self.depths else [0.0])


def variant_name(parametrization: str, alpha: float, axis: str) -> str:
    return f"{parametrization}, depth_alpha={alpha:g}" if axis == "depth" or alpha else parametrization


def expected_pass(parametrization: str, alpha: float, axis: str) -> bool:
    """What the theory predicts: muP is flat in width; depth rules bound the residual in L."""
    return alpha > 0 if axis == "depth" else parametrization != "sp"


def _model_cfg(cc: CoordCheckConfig, d_model: int, n_layers: int) -> ModelConfig:
    moe = MoEConfig(num_experts=4, top_k=2) if cc.model == "moe" else MoEConfig()
    # d_ff = 2 d_model: MLP and expert widths scale exactly with d_model (hidden matrices).
    return ModelConfig(name=f"coord-{cc.model}", d_model=d_model, n_layers=n_layers, n_heads=cc.n_heads,
                       d_ff=2 * d_model, vocab_size=cc.vocab_size, seq_len=cc.seq_len, moe=moe)


def _batches(cc: CoordCheckConfig, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (x, y) batches of (B, T) token ids, the same for every width and depth."""
    B, T = cc.batch_size, cc.seq_len
    if cc.data == "random":
        g = torch.Generator().manual_seed(10_000 + seed)
        seqs = torch.randint(0, cc.vocab_size, (n, B, T + 1), generator=g)
    elif cc.data == "embedded":
        from lrscale.data import DataConfig, build_corpus
        corpus = build_corpus(DataConfig(source="embedded", max_bytes=2_000_000,
                                         tokenizer={"vocab_size": cc.vocab_size}))  # type: ignore[arg-type]
        toks = torch.as_tensor(np.asarray(corpus.train[: n * B * (T + 1) * 4], dtype=np.int64))
        g = torch.Generator().manual_seed(10_000 + seed)
        starts = torch.randint(0, len(toks) - T - 1, (n, B), generator=g)
        seqs = torch.stack([torch.stack([toks[s:s + T + 1] for s in row]) for row in starts])
    else:
        raise ValueError(f"--data {cc.data!r} is unknown; valid: random, embedded")
    return [(s[:, :-1].contiguous(), s[:, 1:].contiguous()) for s in seqs]


def spectral_norm(w: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Largest singular value of each matrix in w (..., a, b) by power iteration (cheap next to
    an SVD; 50 iterations are plenty for the ratios plotted here)."""
    w = w.double()
    v = torch.ones(*w.shape[:-2], w.shape[-1], 1, dtype=w.dtype) / math.sqrt(w.shape[-1])
    for _ in range(iters):
        v = w.transpose(-2, -1) @ (w @ v)
        v = v / v.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    return (w @ v).norm(dim=(-2, -1))


def _spectral_ratio(w: torch.Tensor, w0: torch.Tensor) -> float | None:
    """Mean over matrices (leading dims) of ||w - w0||_2 / ||w0||_2; None for vectors."""
    if w.ndim < 2:
        return None
    return float((spectral_norm(w - w0) / spectral_norm(w0)).mean())


def _weight_rows(model: Transformer, w0: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    spec: dict[str, list[float]] = {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            role = p.role.value
            num[role] = num.get(role, 0.0) + float((p - w0[n]).double().pow(2).sum())
            den[role] = den.get(role, 0.0) + float(w0[n].double().pow(2).sum())
            s = _spectral_ratio(p.detach(), w0[n])
            if s is not None:
                spec.setdefault(role, []).append(s)
    return {r: {"rel_frob": math.sqrt(num[r] / den[r]) if den[r] else math.nan,
                "rel_spec": float(np.mean(spec[r])) if r in spec else math.nan} for r in num}


def _module_key(name: str, n_layers: int, axis: str) -> str | None:
    """Width checks keep every module; depth checks keep what exists at every depth."""
    if axis == "width":
        return name
    if name == f"block{n_layers - 1}":
        return "residual"
    return name if name in ("embed", "logits") else None


def measure(cc: CoordCheckConfig, parametrization: str, alpha: float, size: int, seed: int) -> tuple[list, list]:
    """Train `steps` AdamW steps (constant LR, no clipping, no weight decay) and record sizes."""
    d_model, n_layers = (cc.width, size) if cc.axis == "depth" else (size, cc.n_layers)
    mcfg = _model_cfg(cc, d_model, n_layers)
    pcfg = ParametrizationConfig(name=parametrization, base_d_model=cc.width if cc.axis == "depth" else cc.sizes[0],
                                 depth_alpha=alpha, base_n_layers=cc.sizes[0] if cc.axis == "depth" else n_layers)
    param = build_parametrization(pcfg, mcfg)
    model = Transformer(mcfg, param, attn_backend="eager", expert_backend="loop")
    init_weights(model, param, seed=seed)
    opt = build_optimizer(model, param_table(model, param), OptimConfig(lr=cc.lr), tokens_per_step=1, total_tokens=1)
    # One batch, trained on at every step and probed: the update's rank stays <= B*T, so widths a
    # few times B*T already show the width -> infinity behaviour (muP's limit is at fixed batch and
    # steps, TP-V Sec. 5); fresh batches each step would raise the rank by B*T per step.
    batches = _batches(cc, 1, seed) * (cc.steps + 1)
    probe_x = batches[0][0]
    variant = variant_name(parametrization, alpha, cc.axis)
    base = {"variant": variant, "parametrization": parametrization, "depth_alpha": alpha, "size": size,
            "d_model": d_model, "n_layers": n_layers, "seed": seed}

    def acts() -> dict[str, torch.Tensor]:
        model.eval()
        a = block_activations(model, probe_x)
        model.train()
        return {k: v for name, v in a.items() if (k := _module_key(name, n_layers, cc.axis))}

    a0 = acts()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    act_rows, weight_rows = [], []
    for step in range(cc.steps + 1):
        if step:
            x, y = batches[step]
            out = model(x, y)
            (out.loss + out.aux_loss).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        a = acts() if step else a0
        for k, v in a.items():
            act_rows.append({**base, "step": step, "module": k, "act_rms": float(v.pow(2).mean().sqrt()),
                             "update_rms": float((v - a0[k]).pow(2).mean().sqrt())})
        if step == cc.steps:  # weights: the last step only (the verdicts and figure use it)
            for role, r in _weight_rows(model, w0).items():
                weight_rows.append({**base, "step": step, "role": role, **r})
    return act_rows, weight_rows


def slope(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(size); nan if any value is not positive."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        return math.nan
    return float(np.polyfit(np.log(sizes), np.log(v), 1)[0])


def _mean_over_seeds(rows: list[dict], key: str, value: str, variant: str, step: int, sizes: list[int]):
    out: dict[str, list[float]] = {}
    for name in sorted({r[key] for r in rows if r["variant"] == variant}):
        vals = []
        for s in sizes:
            v = [r[value] for r in rows if r["variant"] == variant and r[key] == name and r["size"] == s
                 and r["step"] == step]
            vals.append(float(np.mean(v)) if v else math.nan)
        out[name] = vals
    return out


def verdicts(cc: CoordCheckConfig, act_rows: list[dict], weight_rows: list[dict]) -> dict:
    """Slopes per variant and module at the last step, and the pass/fail verdict."""
    sizes, out = cc.sizes, {}
    for p in cc.parametrizations:
        for alpha in cc.alphas:
            variant = variant_name(p, alpha, cc.axis)
            upd = _mean_over_seeds(act_rows, "module", "update_rms", variant, cc.steps, sizes)
            act = _mean_over_seeds(act_rows, "module", "act_rms", variant, cc.steps, sizes)
            modules = {}
            for name in upd:
                su, sa = slope(sizes, upd[name]), slope(sizes, act[name])
                if cc.axis == "width":
                    lowest = -math.inf if name.startswith("attn_logits") else -cc.tol_below
                    ok = math.isfinite(su) and lowest <= su <= cc.tol
                else:
                    ok = (math.isfinite(su) and su <= cc.tol and math.isfinite(sa) and sa <= cc.tol) \
                        if name == "residual" else None
                modules[name] = {"slope_update_rms": su, "slope_act_rms": sa, "update_rms": upd[name],
                                 "act_rms": act[name], "ok": ok}
            roles = {}
            for kind in ("rel_frob", "rel_spec"):
                for role, vals in _mean_over_seeds(weight_rows, "role", kind, variant, cc.steps, sizes).items():
                    roles.setdefault(role, {})[f"slope_{kind}"] = slope(sizes, vals)
                    roles[role][kind] = vals
            checked = [m["ok"] for m in modules.values() if m["ok"] is not None]
            passed = bool(checked) and all(checked)
            out[variant] = {"parametrization": p, "depth_alpha": alpha, "criterion":
                            "flat" if cc.axis == "width" else "bounded", "pass": passed,
                            "expected_pass": expected_pass(p, alpha, cc.axis), "modules": modules, "roles": roles}
    return out


def format_table(cc: CoordCheckConfig, result: dict) -> str:
    crit = (f"flat: -{cc.tol_below} <= slope <= {cc.tol} (attn_logits: slope <= {cc.tol})" if cc.axis == "width"
            else f"bounded: residual slope <= {cc.tol}")
    lines = [f"coordinate check vs {cc.axis} {cc.sizes}, {cc.model}, {cc.steps} AdamW steps at lr {cc.lr:g}, "
             f"seeds {cc.seeds}, {crit}",
             f"{'variant':<24} {'module':<16} {'slope(update)':>13} {'slope(act)':>11}  ok"]
    for variant, v in result.items():
        for name, m in v["modules"].items():
            ok = "-" if m["ok"] is None else ("yes" if m["ok"] else "NO")
            lines.append(f"{variant:<24} {name:<16} {m['slope_update_rms']:>13.3f} {m['slope_act_rms']:>11.3f}  {ok}")
        verdict = "PASS" if v["pass"] else "FAIL"
        agree = "as expected" if v["pass"] == v["expected_pass"] else "NOT as expected"
        lines.append(f"{variant:<24} => {v['criterion']}: {verdict} ({agree})")
    return "\n".join(lines)


def plot(cc: CoordCheckConfig, act_rows: list[dict], weight_rows: list[dict], result: dict, path: Path,
         hardware: str) -> Path:
    """One row per variant: update_rms, act_rms (per module) and rel_spec (per role) vs size at the
    last step, log-log; the title says the scale, data and hardware."""
    from matplotlib import cm
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = list(result)
    fig = Figure(figsize=(13, 3.4 * len(variants) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(variants), 3, squeeze=False))
    sizes = cc.sizes
    for row, variant in zip(axes, variants):
        v = result[variant]
        panels = [("update_rms", "RMS(h_t - h_0) per module", v["modules"], "update_rms"),
                  ("act_rms", "RMS(h_t) per module", v["modules"], "act_rms"),
                  ("rel_spec", "||W_t - W_0||_2 / ||W_0||_2 per role", v["roles"], "rel_spec")]
        for ax, (_, ylabel, entries, key) in zip(row, panels):
            names = list(entries)
            colors = cm.viridis(np.linspace(0, 0.9, max(len(names), 1)))
            for c, name in zip(colors, names):
                vals = entries[name].get(key)
                if vals is None or not np.all(np.isfinite(vals)):
                    continue
                s = entries[name].get("slope_update_rms" if key == "update_rms" else
                                      "slope_act_rms" if key == "act_rms" else "slope_rel_spec")
                ax.plot(sizes, vals, "o-", color=c, ms=3, lw=1, label=f"{name} ({s:+.2f})")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(cc.axis + (" (d_model)" if cc.axis == "width" else " (n_layers)"))
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=5.5, ncol=2)
        verdict = "PASS" if v["pass"] else "FAIL"
        row[0].set_title(f"{variant}: {v['criterion']} {verdict}", fontsize=9, loc="left")
    fig.suptitle(f"Coordinate check vs {cc.axis} after {cc.steps} AdamW steps (lr {cc.lr:g}), tiny {cc.model}, "
                 f"seq {cc.seq_len} x batch {cc.batch_size}, seeds {cc.seeds}; legend: fitted log-log slope\n"
                 f"data: one fixed batch of {cc.data} tokens (vocab {cc.vocab_size}), trained on and probed | hardware: {hardware}", fontsize=9)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def run_coord_check(cc: CoordCheckConfig) -> tuple[dict, list, list]:
    for p in cc.parametrizations:
        if p not in ("sp", "mup"):
            raise ValueError(f"parametrization {p!r} is unknown; valid: sp, mup")
    if cc.model not in ("dense", "moe"):
        raise ValueError(f"--model {cc.model!r} is unknown; valid: dense, moe")
    if len(cc.sizes) < 2:
        raise ValueError("need at least two widths (or depths) to fit a slope")
    act_rows, weight_rows = [], []
    for p in cc.parametrizations:
        for alpha in cc.alphas:
            for size in cc.sizes:
                for seed in cc.seeds:
                    a, w = measure(cc, p, alpha, size, seed)
                    act_rows += a
                    weight_rows += w
    return verdicts(cc, act_rows, weight_rows), act_rows, weight_rows


def build_parser() -> argparse.ArgumentParser:
    d = CoordCheckConfig()
    p = argparse.ArgumentParser(prog="python -m analysis.coord_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parametrization", nargs="+", choices=("sp", "mup"), default=None,
                   help="width rule sets (default: sp mup for widths; mup for depths, run at base width "
                        "where sp equals mup)")
    p.add_argument("--model", choices=("dense", "moe"), default=d.model)
    p.add_argument("--widths", nargs="+", type=int, default=d.widths, help="d_model values (width check)")
    p.add_argument("--depths", nargs="+", type=int, default=[], help="n_layers values: run a depth check instead")
    p.add_argument("--width", type=int, default=d.width, help="d_model of the depth check")
    p.add_argument("--n-layers", type=int, default=d.n_layers, help="n_layers of the width check")
    p.add_argument("--n-heads", type=int, default=d.n_heads)
    p.add_argument("--depth-alpha", nargs="+", type=float, default=[],
                   help="parametrization.depth_alpha values (default: 0 for width; 0, 0.5, 1 for depth)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--seeds", nargs="+", type=int, default=d.seeds)
    p.add_argument("--data", choices=("random", "embedded"), default=d.data)
    p.add_argument("--tol", type=float, default=d.tol, help="largest slope that counts as flat / bounded")
    p.add_argument("--tol-below", type=float, default=d.tol_below,
                   help="width check: most negative slope that counts as flat")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--out", default="runs/coord_check", help="output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    parametrizations = a.parametrization or (["mup"] if a.depths else ["sp", "mup"])
    cc = CoordCheckConfig(parametrizations=parametrizations, model=a.model, widths=a.widths, depths=a.depths,
                          width=a.width, n_layers=a.n_layers, n_heads=a.n_heads, depth_alphas=a.depth_alpha,
                          steps=a.steps, lr=a.lr, batch_size=a.batch_size, seq_len=a.seq_len,
                          vocab_size=a.vocab_size, seeds=a.seeds, data=a.data, tol=a.tol, tol_below=a.tol_below,
                          threads=a.threads)
    torch.set_num_threads(cc.threads)
    t0 = time.perf_counter()
    try:
        result, act_rows, weight_rows = run_coord_check(cc)
    except ValueError as e:
        print(f"[coord_check] {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    hardware = f"{platform.machine()} CPU, {cc.threads} torch thread(s), float32"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coord_check.json").write_text(json.dumps(
        {"config": asdict(cc), "axis": cc.axis, "sizes": cc.sizes, "hardware": hardware, "wall_time_s": wall,
         "verdicts": result, "activations": act_rows, "weights": weight_rows}, indent=1, allow_nan=True))
    png = plot(cc, act_rows, weight_rows, result, out / "coord_check.png", hardware)
    print(format_table(cc, result))
    print(f"[coord_check] {wall:.1f} s; wrote {out / 'coord_check.json'} and {png}", file=sys.stderr)
    return 0 if all(v["pass"] == v["expected_pass"] for v in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
