"""Training throughput against peers: our transformer beside Hugging Face transformers'
LlamaForCausalLM / MixtralForCausalLM and a small nanoGPT-style model (nanogpt_ref.py),
same shapes, same parameter count, same optimizer, same data.

    python benchmarks/throughput.py                          # CPU suite (the default without CUDA)
    python benchmarks/throughput.py --allocator tuned        # one allocator phase only
    python benchmarks/throughput.py --references             # also the plain reference kernels
    python benchmarks/throughput.py --tiny --rounds 2 --steps 1   # tiny shapes: the plumbing (the test's mode)
    python benchmarks/throughput.py --suite gpu --out benchmarks/results/h100.json
    python benchmarks/throughput.py --suite gpu --filter 'moe_1b'     # a subset (regex on case names)

CPU suite (benchmarks/README.md says why it is built this way): every model is built once
in this one process, on one torch thread, and warmed up; then R rounds, each running K
forward + backward + AdamW steps of every case in turn (the order rotates each round), with
the fp32 matmul peak measured in the same rotation. Each case's steps are timed by the
thread's CPU time (time.thread_time: what other processes take from the CPU does not count)
and by wall time, and counted in minor page faults. Rates are tokens per CPU-second; a ratio
ours/peer is taken round by round, from runs seconds apart under the same load. A case
whose per-round rate spreads by more than --spread-limit ((max - min) / median), or whose
MFU exceeds 100% in any round, is printed as INVALID (reason) instead of a number. Two
allocator phases by default: glibc's own malloc settings (what the peers run with anywhere),
then training/hardware.py:tune_allocator() (what this project applies at start-up) for all.

GPU suite: each case in its own process (so peak memory is that case's alone) unless
--no-isolate, a few warmup steps (compilation happens there), then timed steps with a device
sync after each; the median step time gives tokens/s. MFU = model FLOPs
(ModelConfig.flops_per_token: 6 N_active + attention) over the nominal bf16 peak of the
device (training/hardware.py). A case that cannot run here becomes a 'skipped' row with
the reason; a crash a 'failed' row.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQ_LEN, VOCAB = 2048, 32000  # Llama-2-sized vocabulary
# The GPU suite's models: name -> (ModelConfig fields, batch size in sequences). Untuned batch sizes.
GPU_MODELS = {
    "dense_125m": (dict(d_model=768, n_layers=12, n_heads=12), 16),    # 134M parameters
    "dense_350m": (dict(d_model=1024, n_layers=24, n_heads=16), 8),    # 369M
    "dense_1b": (dict(d_model=2048, n_layers=18, n_heads=16), 4),      # 1.04B
    "moe_1b": (dict(d_model=1024, n_layers=14, n_heads=16,             # 1.07B total, 0.36B active
                    moe=dict(num_experts=8, top_k=2)), 4),
}
# Targets from issue #5 (checked into the JSON; "unmeasured" until a GPU run exists).
TARGETS = {"dense_1b": {"mfu": 0.45, "vs_transformers": 1.0}, "moe_1b": {"mfu": 0.30, "vs_transformers": 1.5}}
TINY = dict(d_model=64, n_layers=2, n_heads=2, seq_len=32, vocab_size=256)

# CPU suite: issue #13's target, ours over each peer, and the validity bound on a case's spread.
CPU_TARGET = 1.05
SPREAD_LIMIT = 0.10
# One optimizer for every case: AdamW over all parameters, the same hyper-parameters.
OPTIM = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


@dataclass
class Case:
    name: str
    model: dict                      # ModelConfig fields (moe as a nested dict)
    batch_size: int
    impl: str = "ours"               # ours | transformers | nanogpt
    attention_backend: str = "sdpa"
    expert_backend: str = "grouped_mm"
    loss_backend: str = "chunked"    # ours only: models/loss.py
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    extra: dict = field(default_factory=dict)


def _preset(name: str) -> dict:
    import yaml
    m = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
    m["vocab_size"] = 4096
    return m


def _label(model: str, c: Case) -> str:
    if c.impl == "transformers":
        kernels = f"transformers/{c.attention_backend}"
    elif c.impl == "nanogpt":
        kernels = "nanogpt"
    else:
        kernels = c.attention_backend + (f"+{c.expert_backend}" if c.model.get("moe", {}).get("num_experts") else "")
        if c.loss_backend != "chunked":
            kernels += f"+{c.loss_backend}_loss"
    return f"{model}/{kernels}" + ("+compile" if c.compile else "")


def cpu_cases(references: bool = False) -> list[Case]:
    """The default presets in fp32: our fast paths beside the peers; with `references`,
    also our plain reference kernels (eager attention, loop experts, reference loss)."""
    cases = []
    for preset in ("dense_tiny", "moe_tiny"):
        m = _preset(preset)
        variants = [Case("", m, 16)]
        if references:
            variants.append(Case("", m, 16, attention_backend="eager", expert_backend="loop", loss_backend="reference"))
        variants.append(Case("", m, 16, impl="transformers"))
        if preset == "dense_tiny":
            variants.append(Case("", m, 16, impl="nanogpt"))
        cases += [replace(c, name=_label(preset, c)) for c in variants]
    return cases


def gpu_cases() -> list[Case]:
    """bf16 on CUDA at sequence length 2048: every backend combination, compiled, plus
    an uncompiled baseline, and transformers with SDPA with and without compile."""
    cases = []
    for model, (fields, batch) in GPU_MODELS.items():
        m = {**fields, "seq_len": SEQ_LEN, "vocab_size": VOCAB}
        base = Case("", m, batch, device="cuda", dtype="bfloat16", compile=True)
        if "moe" in fields:
            variants = [replace(base, expert_backend=e) for e in ("grouped_mm", "megablocks", "loop")]
            variants.append(replace(base, compile=False))
        else:
            variants = [replace(base, attention_backend=a) for a in ("sdpa", "sdpa_flash", "sdpa_cudnn", "flash_attn")]
            variants.append(replace(base, compile=False))
        variants += [replace(base, impl="transformers", compile=False), replace(base, impl="transformers")]
        cases += [replace(v, name=_label(model, v)) for v in variants]
    return cases


def shrink(case: Case, device: str | None, compile: bool | None) -> Case:
    """Tiny shapes (and optionally another device / no compile) so a suite runs anywhere in seconds."""
    m = {**case.model, **TINY}
    if "moe" in m:
        m["moe"] = {**m["moe"], "d_expert": 64}
    dev = device or case.device
    return replace(case, model=m, batch_size=2, device=dev, dtype=case.dtype if dev == "cuda" else "float32",
                   compile=case.compile if compile is None else compile)


# ---- building a case --------------------------------------------------------------------
# Each builder returns (model, loss_fn, info): loss_fn(x, y) is the scalar a step backpropagates
# (the language-model loss plus the MoE balancing loss, for every implementation alike).

class _Skip(Exception):
    """This case cannot run here (a missing package or device); not a failure."""


def _model_config(case: Case):
    from lrscale.models import ModelConfig, MoEConfig
    mdict = dict(case.model)
    moe = MoEConfig(**mdict.pop("moe", {}))
    return ModelConfig(**mdict, moe=moe)


def _build_ours(case: Case, cfg, device):
    from lrscale.models import Transformer
    from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights
    from lrscale.training.config import HardwareConfig
    from lrscale.training.hardware import apply_compile, check_kernels

    hw = HardwareConfig(device=case.device, dtype=case.dtype, attention_backend=case.attention_backend,
                        expert_backend=case.expert_backend, compile=case.compile)
    check_kernels(hw, cfg, device)  # BackendUnavailableError -> a 'skipped' row
    param = build_parametrization(ParametrizationConfig(), cfg)
    model = Transformer(cfg, param, case.attention_backend, case.expert_backend, case.loss_backend)
    init_weights(model, param, seed=0)
    model.to(device)
    apply_compile(model, hw)

    def loss_fn(x, y):
        out = model(x, y)
        return out.loss + out.aux_loss
    return model, loss_fn, {"loss_backend": case.loss_backend}


def _count_grouped_mm_calls(model, run: Callable[[], None]) -> int:
    """How many grouped GEMMs `run` issues: proof that Mixtral's fast expert path ran."""
    import torch
    import torch.nn.functional as F
    calls = [0]
    originals = {mod: getattr(mod, name) for mod, name in ((F, "grouped_mm"), (torch, "_grouped_mm"))
                 if hasattr(mod, name)}

    def counting(fn):
        def wrapper(*a, **kw):
            calls[0] += 1
            return fn(*a, **kw)
        return wrapper
    try:
        for mod, fn in originals.items():
            setattr(mod, "grouped_mm" if mod is F else "_grouped_mm", counting(fn))
        run()
    finally:
        for mod, fn in originals.items():
            setattr(mod, "grouped_mm" if mod is F else "_grouped_mm", fn)
        model.zero_grad(set_to_none=True)
    return calls[0]


def _build_transformers(case: Case, cfg, device):
    """LlamaForCausalLM (dense) or MixtralForCausalLM (MoE) with our shapes: untied
    embeddings, no biases, SwiGLU, RoPE, RMSNorm; Mixtral's router is top-k softmax and its
    balancing loss is on with our coefficient (output_router_logits), as ours is."""
    try:
        import transformers
    except ImportError:
        raise _Skip("transformers not installed (pip install transformers)") from None
    import torch
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                  num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                  max_position_embeddings=cfg.seq_len, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
                  tie_word_embeddings=False)
    if cfg.is_moe:
        hf_cfg = transformers.MixtralConfig(intermediate_size=cfg.expert_width, num_local_experts=cfg.moe.num_experts,
                                            num_experts_per_tok=cfg.moe.top_k, sliding_window=None,
                                            output_router_logits=True, router_aux_loss_coef=cfg.moe.aux_loss_coef,
                                            **common)
    else:
        hf_cfg = transformers.LlamaConfig(intermediate_size=cfg.ffn_width, attention_bias=False, mlp_bias=False,
                                          **common)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=case.attention_backend)
    model.to(device)
    n_params, n_ours = sum(p.numel() for p in model.parameters()), cfg.param_counts()["n_total"]
    if n_params != n_ours:
        raise ValueError(f"{type(model).__name__} has {n_params} parameters, ours {n_ours}: not the same model")
    if case.compile:
        for layer in model.model.layers:
            layer.compile()

    def loss_fn(x, y):  # labels=x: transformers shifts them itself and adds coef * aux to the loss
        return model(input_ids=x, labels=x).loss
    info = {"transformers": transformers.__version__, "transformers_class": type(model).__name__,
            "param_match": True, "attn_implementation": model.config._attn_implementation}
    if cfg.is_moe:
        info["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
        if not case.compile:
            x = torch.randint(0, cfg.vocab_size, (1, cfg.seq_len), device=device)
            info["grouped_mm_calls_per_step"] = _count_grouped_mm_calls(model, lambda: loss_fn(x, x).backward())
    return model, loss_fn, info


def _build_nanogpt(case: Case, cfg, device):
    from lrscale.benchmarks.nanogpt_ref import NanoGPT
    if cfg.is_moe or cfg.kv_heads != cfg.n_heads:
        raise _Skip("the nanoGPT reference is dense, without grouped-query attention")
    model = NanoGPT(cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ffn_width, cfg.seq_len,
                    cfg.rope_theta, cfg.norm_eps).to(device)
    n_params, n_ours = sum(p.numel() for p in model.parameters()), cfg.param_counts()["n_total"]
    if n_params != n_ours:
        raise ValueError(f"nanoGPT reference has {n_params} parameters, ours {n_ours}: not the same model")
    return model, lambda x, y: model(x, y)[1], {"param_match": True}


BUILDERS = {"ours": _build_ours, "transformers": _build_transformers, "nanogpt": _build_nanogpt}


def make_step(case: Case, cfg, device, fused: bool | None = None):
    """Build the case and return (step, info): step() is one forward + backward + AdamW step
    on a fixed batch of random tokens (never zeros), targets the next token."""
    import torch
    from lrscale.training.config import HardwareConfig
    from lrscale.training.hardware import autocast

    model, loss_fn, info = BUILDERS[case.impl](case, cfg, device)
    opt = torch.optim.AdamW(model.parameters(), **OPTIM, **({"fused": True} if fused else {"foreach": True}))
    amp = autocast(HardwareConfig(dtype=case.dtype), device)  # fp32: no autocast at all
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (case.batch_size, cfg.seq_len), generator=g).to(device)
    y = x.roll(-1, dims=1)

    def step():
        with amp:
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, info


# ---- CPU suite: interleaved rounds in one process -----------------------------------------

def _stats(values: list[float]) -> dict:
    med = statistics.median(values)
    return {"per_round": values, "min": min(values), "median": med, "max": max(values),
            "spread": (max(values) - min(values)) / med if med else float("inf")}


def _matmul_peak(size: int, reps: int = 3):
    """One round's CPU peak: the best of `reps` fp32 (size x size) matmuls on random data,
    timed by this thread's CPU time, in TFLOP/s (the inputs rotate, so no repeat is cached)."""
    import torch
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)) for _ in range(reps)]

    def run() -> float:
        best = float("inf")
        for a, b in pairs:
            t0 = time.thread_time()
            a @ b
            best = min(best, time.thread_time() - t0)
        return 2 * size ** 3 / best / 1e12
    run()  # warm up
    return run


def _thread_rusage() -> tuple[float, float]:
    """(user, system) CPU seconds of this thread (Linux); the process's elsewhere."""
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    r = resource.getrusage(who)
    return r.ru_utime, r.ru_stime


def run_rounds(steps_of: dict[str, Callable[[], None]], peak: Callable[[], float], rounds: int, steps: int,
               warmup: int) -> tuple[dict, list[float]]:
    """Warm every case up, then `rounds` rounds of `steps` steps per case in a rotating order,
    the peak measured in the same rotation. Per case and round: CPU and wall seconds, user and
    system CPU seconds, minor page faults."""
    from lrscale.training.hardware import minor_page_faults
    for step in steps_of.values():
        for _ in range(warmup):
            step()
    names = list(steps_of) + ["<peak>"]
    raw = {n: {"cpu_s": [], "wall_s": [], "user_s": [], "sys_s": [], "faults": []} for n in steps_of}
    peaks = []
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if name == "<peak>":
                peaks.append(peak())
                continue
            f0, (u0, s0) = minor_page_faults(), _thread_rusage()
            t0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(steps):
                steps_of[name]()
            cpu, wall = time.thread_time() - t0, time.perf_counter() - w0
            u1, s1 = _thread_rusage()
            row = raw[name]
            row["cpu_s"].append(cpu)
            row["wall_s"].append(wall)
            row["user_s"].append(u1 - u0)
            row["sys_s"].append(s1 - s0)
            row["faults"].append(minor_page_faults() - f0)
    return raw, peaks


def summarize_phase(cases: list[Case], infos: dict, raw: dict, peaks: list[float], steps: int,
                    spread_limit: float) -> dict:
    """Rates, MFU, validity per case; per-round ratios ours/peer; all JSON-ready."""
    peak = _stats(peaks)
    peak_ok = peak["spread"] <= spread_limit
    rows, rate_of = [], {}
    for c in cases:
        row = {"name": c.name, "impl": c.impl, "model": c.model, "batch_size": c.batch_size,
               "attention_backend": c.attention_backend, "expert_backend": c.expert_backend,
               "loss_backend": c.loss_backend if c.impl == "ours" else None, **infos[c.name]}
        if c.name not in raw:
            rows.append(row)
            continue
        cfg = _model_config(c)
        tokens = steps * c.batch_size * cfg.seq_len
        rd = raw[c.name]
        rate = _stats([tokens / s for s in rd["cpu_s"]])
        mfu = [r * cfg.flops_per_token() / (p * 1e12) for r, p in zip(rate["per_round"], peaks)]
        reasons = []
        if rate["spread"] > spread_limit:
            reasons.append(f"round-to-round spread {100 * rate['spread']:.0f}% > {100 * spread_limit:.0f}%")
        if max(mfu) > 1:
            reasons.append(f"MFU {100 * max(mfu):.0f}% > 100% in a round")
        row.update({
            "status": "invalid" if reasons else "ok", "reason": "; ".join(reasons) or None,
            **cfg.param_counts(), "flops_per_token": cfg.flops_per_token(), "tokens_per_round": tokens,
            "tokens_per_cpu_s": rate, "tokens_per_wall_s": _stats([tokens / s for s in rd["wall_s"]]),
            "mfu": {**_stats(mfu), "valid": peak_ok},
            "faults_per_step": statistics.median(rd["faults"]) / steps,
            "sys_fraction": statistics.median(s / max(u + s, 1e-12) for u, s in zip(rd["user_s"], rd["sys_s"])),
            "raw": rd,
        })
        rate_of[c.name] = row
        rows.append(row)
    ratios = []  # our fast path (the default kernels) over each peer and each of our references
    fast = [r for r in rows if r["impl"] == "ours" and r["loss_backend"] == "chunked" and r["name"] in rate_of]
    for ours in fast:
        model = ours["name"].split("/")[0]
        for other in (r for r in rows if r["name"].split("/")[0] == model and r["name"] in rate_of and r not in fast):
            per_round = [a / b for a, b in zip(ours["tokens_per_cpu_s"]["per_round"],
                                               other["tokens_per_cpu_s"]["per_round"])]
            bad = [r["name"] for r in (ours, other) if r["status"] != "ok"]
            wall = [a / b for a, b in zip(ours["tokens_per_wall_s"]["per_round"],
                                          other["tokens_per_wall_s"]["per_round"])]
            entry = {"ours": ours["name"], "other": other["name"], "peer": other["impl"] != "ours",
                     "cpu_time": _stats(per_round), "wall_time_median": statistics.median(wall),
                     "status": "invalid" if bad else "ok",
                     "reason": f"invalid case: {', '.join(bad)}" if bad else None}
            if entry["peer"]:
                ok = not bad and entry["cpu_time"]["median"] >= CPU_TARGET
                entry["target"] = {"min_ratio": CPU_TARGET, "status": "invalid" if bad else "met" if ok else "missed"}
            ratios.append(entry)
    return {"peak": {**peak, "unit": "TFLOP/s", "valid": peak_ok}, "cases": rows, "ratios": ratios}


def _fmt_rate(row: dict) -> str:
    if row.get("status") != "ok":
        return f"INVALID ({row['reason']})" if row.get("status") == "invalid" else \
            f"{row.get('status', '?').upper()}: {row.get('error', '')[:90]}"
    r = row["tokens_per_cpu_s"]
    return f"{r['median']:7.0f} [{r['min']:.0f}-{r['max']:.0f}]"


def print_phase(phase: str, res: dict) -> None:
    p = res["peak"]
    print(f"\n== allocator: {phase}; peak fp32 matmul {1e3 * p['median']:.1f} GFLOP/s "
          f"[{1e3 * p['min']:.1f}-{1e3 * p['max']:.1f}]" + ("" if p["valid"] else " INVALID (spread)"))
    head = f"{'case':<34} {'params':>11} {'tokens/CPU-s median [min-max]':>30} {'spread':>7} {'tok/wall-s':>10} " \
           f"{'MFU':>6} {'faults/step':>11} {'sys':>5}"
    print(head)
    print("-" * len(head))
    for r in res["cases"]:
        if "tokens_per_cpu_s" not in r:
            print(f"{r['name']:<34} {_fmt_rate(r)}")
            continue
        params = f"{r['n_total'] / 1e6:.1f}M/{r['n_active'] / 1e6:.1f}M"
        rate = r["tokens_per_cpu_s"]
        if r["status"] != "ok":
            print(f"{r['name']:<34} {params:>11} {_fmt_rate(r)}")
            continue
        mfu = f"{100 * r['mfu']['median']:5.1f}%" if r["mfu"]["valid"] else "  n/a "
        print(f"{r['name']:<34} {params:>11} {_fmt_rate(r):>30} {100 * rate['spread']:6.1f}% "
              f"{r['tokens_per_wall_s']['median']:10.0f} {mfu:>6} {r['faults_per_step']:11.0f} "
              f"{100 * r['sys_fraction']:4.0f}%")
    print(f"\n{'ours / other (per-round CPU-time ratio)':<62} {'median [min-max]':>24} {'target':>8}")
    for e in res["ratios"]:
        name = f"{e['ours']} / {e['other']}"
        if e["status"] != "ok":
            print(f"{name:<62} INVALID ({e['reason']})")
            continue
        c = e["cpu_time"]
        t = e.get("target", {}).get("status", "")
        print(f"{name:<62} {c['median']:>7.3f} [{c['min']:.3f}-{c['max']:.3f}] {t:>8}")


def run_cpu_suite(args) -> int:
    import torch

    from lrscale.training.hardware import tune_allocator
    torch.set_num_threads(1)
    cases = cpu_cases(args.references)
    if args.tiny:
        cases = [shrink(c, "cpu", False) for c in cases]
    cases = [c for c in cases if re.search(args.filter, c.name)]
    rounds = args.rounds or (2 if args.tiny else 7)
    steps = args.steps or (1 if args.tiny else 2)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    peak_size = 256 if args.tiny else 1024
    phases = {"both": ["default", "tuned"], "default": ["default"], "tuned": ["tuned"]}[args.allocator]
    load_before = os.getloadavg()

    device = torch.device("cpu")
    steps_of, infos = {}, {}
    for c in cases:  # build everything once; a case that cannot run is a row with the reason
        try:
            steps_of[c.name], infos[c.name] = make_step(c, _model_config(c), device)
        except _Skip as e:
            infos[c.name] = {"status": "skipped", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - report it as a row, measure the others
            infos[c.name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    peak = _matmul_peak(peak_size)

    results = {}
    for phase in phases:
        allocator = tune_allocator() if phase == "tuned" else {"applied": False, "reason": "glibc defaults"}
        raw, peaks = run_rounds(steps_of, peak, rounds, steps, warmup)
        results[phase] = {"allocator": allocator, **summarize_phase(cases, infos, raw, peaks, steps, args.spread_limit)}
        print_phase(phase, results[phase])
    load_after = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) before {load_before}, after {load_after}; "
          f"{os.cpu_count()} CPUs; 1 torch thread")

    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    meta = {"suite": "cpu", "tiny": args.tiny, "machine": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "transformers": hf_version, "threads": torch.get_num_threads(),
            "rounds": rounds, "steps_per_round": steps, "warmup_steps": warmup, "spread_limit": args.spread_limit,
            "target_ratio": CPU_TARGET, "optimizer": {"name": "AdamW", **OPTIM, "foreach": True},
            "dtype": "float32", "timer": "time.thread_time (CPU time of the measuring thread)",
            "peak_with": f"fp32 matmul {peak_size}^3, best of 3 per round, 1 thread",
            "load_average_before": load_before, "load_average_after": load_after,
            "date": time.strftime("%Y-%m-%d %H:%M"), "note": args.note}
    out = args.out or Path("benchmarks/results/cpu_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "phases": results}, indent=1) + "\n")
    print(f"wrote {out}")
    failed = [n for n, i in infos.items() if i.get("status") == "failed"]
    return 1 if failed else 0


# ---- GPU suite: one process per case ------------------------------------------------------

def measure(case: Case, steps: int, warmup: int) -> dict:
    """Build, warm up, time `steps` training steps; a row of numbers (or a skip/failure)."""
    import torch

    from lrscale.models import BackendUnavailableError

    try:
        cfg = _model_config(case)
        if case.device == "cuda" and not torch.cuda.is_available():
            raise _Skip("no CUDA device")
        device = torch.device(case.device)
        step, info = make_step(case, cfg, device, fused=device.type == "cuda")

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        sync()
        warmup_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        dt = statistics.median(times)
        tokens = case.batch_size * cfg.seq_len
        peak_mem = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # process max RSS
        return {"status": "ok", **info, "tokens_per_s": tokens / dt, "step_s_median": dt, "step_s_min": min(times),
                "step_s_max": max(times), "warmup_s": warmup_s, "peak_mem_bytes": peak_mem,
                "flops_per_token": cfg.flops_per_token(), **cfg.param_counts(),
                "achieved_tflops": cfg.flops_per_token() * tokens / dt / 1e12}
    except (_Skip, BackendUnavailableError) as e:
        return {"status": "skipped", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - report the failure as a row, keep benchmarking
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


def _measure_into(case: Case, steps: int, warmup: int, queue) -> None:
    queue.put(measure(case, steps, warmup))


def run_case(case: Case, steps: int, warmup: int, isolate: bool) -> dict:
    if isolate:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_measure_into, args=(case, steps, warmup, q))
        p.start()
        p.join()
        res = q.get() if not q.empty() else {"status": "failed", "error": f"process exited with {p.exitcode}"}
    else:
        res = measure(case, steps, warmup)
    return {**asdict(case), **res}


def _model_of(row: dict) -> str:
    return row["name"].split("/")[0]


def add_ratios(rows: list[dict], peak_tflops: float) -> None:
    """MFU for every measured row; tokens/s over the best transformers row of the same model."""
    best_hf: dict[str, float] = {}
    for r in rows:
        if r["status"] == "ok":
            r["mfu"] = r["achieved_tflops"] / peak_tflops
            if r["impl"] == "transformers":
                best_hf[_model_of(r)] = max(best_hf.get(_model_of(r), 0.0), r["tokens_per_s"])
    for r in rows:
        if r["status"] == "ok" and r["impl"] == "ours" and _model_of(r) in best_hf:
            r["vs_transformers"] = r["tokens_per_s"] / best_hf[_model_of(r)]


def check_targets(rows: list[dict]) -> dict:
    """For each target model: the best of our rows against the issue's targets."""
    out = {}
    for model, target in TARGETS.items():
        ours = [r for r in rows if _model_of(r) == model and r["impl"] == "ours" and r["status"] == "ok"]
        if not ours:
            out[model] = {"target": target, "status": "unmeasured"}
            continue
        best = max(ours, key=lambda r: r["tokens_per_s"])
        ratio = best.get("vs_transformers")
        met = best["mfu"] >= target["mfu"] and (ratio is not None and ratio >= target["vs_transformers"])
        out[model] = {"target": target, "best_case": best["name"], "mfu": best["mfu"], "vs_transformers": ratio,
                      "status": "met" if met else "missed"}
    return out


def print_table(rows: list[dict]) -> None:
    head = (f"{'case':<44} {'params total/active':>19} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} "
            f"{'vs HF':>6} {'peak MiB':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['name']:<44} {r['status'].upper()}: {r['error'][:110]}")
            continue
        params = f"{r['n_total'] / 1e6:.1f}M/{r['n_active'] / 1e6:.1f}M"
        ratio = f"{r['vs_transformers']:.2f}x" if "vs_transformers" in r else "-"
        print(f"{r['name']:<44} {params:>19} {r['tokens_per_s']:>10.0f} {r['achieved_tflops']:>8.3f} "
              f"{100 * r['mfu']:>5.1f}% {ratio:>6} {r['peak_mem_bytes'] / 2**20:>9.0f}")


def run_gpu_suite(args) -> int:
    import torch

    from lrscale.training.hardware import peak_flops
    cases = gpu_cases()
    if args.tiny or args.device or args.no_compile:
        cases = [shrink(c, args.device, False if args.no_compile else None) if args.tiny
                 else replace(c, device=args.device or c.device, compile=c.compile and not args.no_compile)
                 for c in cases]
        cases = [replace(c, name=_label(c.name.split("/")[0], c)) for c in cases]  # names say what ran
        cases = list({c.name: c for c in cases}.values())  # --no-compile merges compiled/uncompiled twins
    cases = [c for c in cases if re.search(args.filter, c.name)]
    steps = args.steps or (2 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    device = torch.device(cases[0].device if cases else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        device = torch.device("cpu")  # every case will be a 'skipped' row
    peak = peak_flops(device, size=None if device.type == "cuda" else (256 if args.tiny else 1024))

    rows = [run_case(c, steps, warmup, isolate=not args.no_isolate) for c in cases]
    add_ratios(rows, peak["peak_tflops"])
    print_table(rows)
    print(f"MFU against {peak['peak_tflops']:.3g} TFLOP/s: {peak['peak_source']}")
    targets = check_targets(rows) if not args.tiny else {}
    for model, t in targets.items():
        print(f"target {model}: {t['status']} ({t['target']})")
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    meta = {"suite": "gpu", "tiny": args.tiny, "machine": platform.platform(), "processor": platform.processor(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": hf_version,
            "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup, "peak": peak,
            "isolated": not args.no_isolate, "date": time.strftime("%Y-%m-%d %H:%M"), "note": args.note}
    out = args.out or Path("benchmarks/results/gpu_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "targets": targets, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["status"] != "failed" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("cpu", "gpu"), default=None, help="default: gpu if CUDA is visible, else cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: check the plumbing, not the speed")
    ap.add_argument("--filter", default="", help="regex: run only cases whose name matches")
    ap.add_argument("--steps", type=int, default=None,
                    help="cpu: steps per case per round (default 2, tiny 1); gpu: timed steps (default 20, tiny 2)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps per case first (default 2 cpu, 3 gpu, 1 tiny)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/<suite>_throughput.json)")
    ap.add_argument("--note", default="", help="free text stored in the JSON (the machine's load, say)")
    cpu = ap.add_argument_group("cpu suite")
    cpu.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, tiny 2)")
    cpu.add_argument("--allocator", choices=("both", "default", "tuned"), default="both",
                     help="glibc defaults, then tune_allocator() for all (both); or one of them")
    cpu.add_argument("--spread-limit", type=float, default=SPREAD_LIMIT,
                     help="a case whose (max - min) / median rate exceeds this is INVALID (default 0.10)")
    cpu.add_argument("--references", action="store_true",
                     help="also our reference kernels (eager, loop, reference loss)")
    gpu = ap.add_argument_group("gpu suite")
    gpu.add_argument("--device", choices=("cpu", "cuda"), default=None, help="override the suite's device")
    gpu.add_argument("--no-compile", action="store_true", help="turn torch.compile off in every case")
    gpu.add_argument("--no-isolate", action="store_true", help="run cases in this process (faster start)")
    args = ap.parse_args(argv)

    import torch
    suite = args.suite or ("gpu" if torch.cuda.is_available() else "cpu")
    return run_cpu_suite(args) if suite == "cpu" else run_gpu_suite(args)


if __name__ == "__main__":
    sys.exit(main())
