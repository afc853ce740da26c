"""Training throughput, MFU and peak memory per model and kernel choice, beside Hugging
Face transformers' LlamaForCausalLM and MixtralForCausalLM on the same shapes.

    python benchmarks/throughput.py                          # CPU suite (the default without CUDA)
    python benchmarks/throughput.py --suite gpu --out benchmarks/results/h100.json
    python benchmarks/throughput.py --suite gpu --filter 'moe_1b'     # a subset (regex on case names)
    python benchmarks/throughput.py --tiny --no-isolate      # tiny shapes, in one process (the test's mode)

Each case runs in its own process (so peak memory is that case's alone) unless
--no-isolate: a few warmup steps (compilation happens there), then timed
forward + backward + AdamW steps on random tokens; the median step time gives tokens/s.
MFU = model FLOPs (ModelConfig.flops_per_token: 6 N_active + attention) per second over
the peak that training/hardware.py states (nominal bf16 dense on known GPUs, measured
fp32 matmul rate on CPU). The transformers rows use our config's FLOPs for the same
shapes (their parameter count is checked equal). A case that cannot run here (missing
package, wrong device) becomes a 'skipped' row with the reason; a crash a 'failed' row.
A benchmark, not a test: the numbers depend on the machine and what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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


@dataclass
class Case:
    name: str
    model: dict                      # ModelConfig fields (moe as a nested dict)
    batch_size: int
    impl: str = "ours"               # ours | transformers
    attention_backend: str = "sdpa"
    expert_backend: str = "grouped_mm"
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
    kernels = c.attention_backend + (f"+{c.expert_backend}" if c.model.get("moe", {}).get("num_experts") else "")
    if c.impl == "transformers":
        kernels = f"transformers/{c.attention_backend}"
    return f"{model}/{kernels}" + ("+compile" if c.compile else "")


def cpu_cases() -> list[Case]:
    """The default presets in fp32 on the CPU, fast paths against references and transformers."""
    cases = []
    for preset in ("dense_tiny", "moe_tiny"):
        m = _preset(preset)
        for attn, experts in (("sdpa", "grouped_mm"), ("eager", "loop")):
            c = Case("", m, batch_size=16, attention_backend=attn, expert_backend=experts)
            cases.append(replace(c, name=_label(preset, c)))
        c = Case("", m, batch_size=16, impl="transformers")
        cases.append(replace(c, name=_label(preset, c)))
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


# ---- one case ---------------------------------------------------------------------------

def _build_ours(case: Case, cfg, device):
    from lrscale.models import Transformer
    from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights
    from lrscale.training.config import HardwareConfig
    from lrscale.training.hardware import apply_compile, check_kernels

    hw = HardwareConfig(device=case.device, dtype=case.dtype, attention_backend=case.attention_backend,
                        expert_backend=case.expert_backend, compile=case.compile)
    check_kernels(hw, cfg, device)  # BackendUnavailableError -> a 'skipped' row
    param = build_parametrization(ParametrizationConfig(), cfg)
    model = Transformer(cfg, param, case.attention_backend, case.expert_backend)
    init_weights(model, param, seed=0)
    model.to(device)
    apply_compile(model, hw)
    return model, lambda x: model(x, x), {}


def _build_transformers(case: Case, cfg, device):
    """LlamaForCausalLM (dense) or MixtralForCausalLM (MoE) with our shapes: untied
    embeddings, no biases, SwiGLU, RoPE, RMSNorm; Mixtral's router is top-k softmax."""
    try:
        import transformers
    except ImportError:
        raise _Skip("transformers not installed (pip install transformers)") from None
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                  num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                  max_position_embeddings=cfg.seq_len, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
                  tie_word_embeddings=False)
    if cfg.is_moe:
        hf_cfg = transformers.MixtralConfig(intermediate_size=cfg.expert_width, num_local_experts=cfg.moe.num_experts,
                                            num_experts_per_tok=cfg.moe.top_k, sliding_window=None,
                                            output_router_logits=False, **common)
    else:
        hf_cfg = transformers.LlamaConfig(intermediate_size=cfg.ffn_width, attention_bias=False, mlp_bias=False,
                                          **common)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=case.attention_backend)
    model.to(device)
    if case.compile:
        for layer in model.model.layers:
            layer.compile()
    info = {"transformers": transformers.__version__, "transformers_class": type(model).__name__,
            "param_match": sum(p.numel() for p in model.parameters()) == cfg.param_counts()["n_total"]}
    return model, lambda x: model(input_ids=x, labels=x), info


class _Skip(Exception):
    """This case cannot run here (a missing package or device); not a failure."""


def measure(case: Case, steps: int, warmup: int) -> dict:
    """Build, warm up, time `steps` training steps; a row of numbers (or a skip/failure)."""
    import torch

    from lrscale.models import ModelConfig, MoEConfig
    from lrscale.models.backends import BackendUnavailableError
    from lrscale.training.config import HardwareConfig
    from lrscale.training.hardware import autocast

    try:
        mdict = dict(case.model)
        moe = MoEConfig(**mdict.pop("moe", {}))
        cfg = ModelConfig(**mdict, moe=moe)
        if case.device == "cuda" and not torch.cuda.is_available():
            raise _Skip("no CUDA device")
        device = torch.device(case.device)
        build = _build_transformers if case.impl == "transformers" else _build_ours
        model, forward, info = build(case, cfg, device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
        amp = autocast(HardwareConfig(dtype=case.dtype), device)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, cfg.vocab_size, (case.batch_size, cfg.seq_len), generator=g).to(device)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        def step():
            with amp:
                out = forward(x)
                aux = getattr(out, "aux_loss", None)  # transformers' is None unless router logits are output
                loss = out.loss if aux is None else out.loss + aux
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

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


# ---- report -----------------------------------------------------------------------------

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("cpu", "gpu"), default=None, help="default: gpu if CUDA is visible, else cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 cpu, 20 gpu, 2 tiny)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, 1 tiny)")
    ap.add_argument("--filter", default="", help="regex: run only cases whose name matches")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: check the plumbing, not the speed")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="override the suite's device")
    ap.add_argument("--no-compile", action="store_true", help="turn torch.compile off in every case")
    ap.add_argument("--no-isolate", action="store_true", help="run cases in this process (faster start)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<suite>_throughput.json)")
    args = ap.parse_args(argv)

    import torch

    from lrscale.training.hardware import peak_flops
    suite = args.suite or ("gpu" if torch.cuda.is_available() else "cpu")
    cases = gpu_cases() if suite == "gpu" else cpu_cases()
    if args.tiny or args.device or args.no_compile:
        cases = [shrink(c, args.device, False if args.no_compile else None) if args.tiny
                 else replace(c, device=args.device or c.device, compile=c.compile and not args.no_compile)
                 for c in cases]
        cases = [replace(c, name=_label(c.name.split("/")[0], c)) for c in cases]  # names say what ran
        cases = list({c.name: c for c in cases}.values())  # --no-compile merges compiled/uncompiled twins
    cases = [c for c in cases if re.search(args.filter, c.name)]
    steps = args.steps or (2 if args.tiny else 20 if suite == "gpu" else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    device = torch.device(cases[0].device if cases else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        device = torch.device("cpu")  # every case will be a 'skipped' row
    cpu_size = 256 if args.tiny else 1024  # CPU: larger than train.py's 512, a steadier estimate
    peak = peak_flops(device, size=None if device.type == "cuda" else cpu_size)

    rows = [run_case(c, steps, warmup, isolate=not args.no_isolate) for c in cases]
    add_ratios(rows, peak["peak_tflops"])
    print_table(rows)
    print(f"MFU against {peak['peak_tflops']:.3g} TFLOP/s: {peak['peak_source']}")
    targets = check_targets(rows) if suite == "gpu" and not args.tiny else {}
    for model, t in targets.items():
        print(f"target {model}: {t['status']} ({t['target']})")
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    meta = {"suite": suite, "tiny": args.tiny, "machine": platform.platform(), "processor": platform.processor(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": hf_version,
            "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup, "peak": peak,
            "isolated": not args.no_isolate, "date": time.strftime("%Y-%m-%d %H:%M")}
    out = args.out or Path(f"benchmarks/results/{suite}_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "targets": targets, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["status"] != "failed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
