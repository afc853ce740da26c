"""Training throughput and peak memory per model and kernel choice.

    python benchmarks/throughput.py                       # CPU: default dense and MoE presets
    python benchmarks/throughput.py --out results.json --steps 20

Each case runs in its own process (so peak memory is that case's alone): a few warmup
steps, then timed forward+backward+AdamW steps on random tokens. Prints a table and
writes JSON. A benchmark, not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Case:
    name: str
    model: dict                      # ModelConfig fields (moe as a nested dict)
    batch_size: int
    attention_backend: str = "sdpa"
    expert_backend: str = "grouped_mm"
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    extra: dict = field(default_factory=dict)


def _preset(name: str) -> dict:
    import yaml
    return yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())


def cpu_cases() -> list[Case]:
    cases = []
    for preset in ("dense_tiny", "moe_tiny"):
        m = _preset(preset)
        m["vocab_size"] = 4096
        backends = [("sdpa", "grouped_mm"), ("eager", "loop")] if preset.startswith("moe") else [("sdpa", "grouped_mm"), ("eager", "loop")]
        for attn, experts in backends:
            cases.append(Case(f"{preset}/{attn}+{experts}", m, batch_size=16, attention_backend=attn,
                              expert_backend=experts))
    return cases


def _measure(case: Case, steps: int, warmup: int, queue) -> None:
    import torch

    from models import ModelConfig, MoEConfig, Transformer
    from parametrization import ParametrizationConfig, build_parametrization, init_weights
    try:
        mdict = dict(case.model)
        moe = MoEConfig(**mdict.pop("moe", {}))
        cfg = ModelConfig(**mdict, moe=moe)
        device = torch.device(case.device)
        param = build_parametrization(ParametrizationConfig(), cfg)
        model = Transformer(cfg, param, case.attention_backend, case.expert_backend)
        init_weights(model, param, seed=0)
        model.to(device)
        if case.compile:
            for b in model.blocks:
                b.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
        x = torch.randint(0, cfg.vocab_size, (case.batch_size, cfg.seq_len), device=device)
        amp = (torch.autocast(device.type, dtype=torch.bfloat16) if case.dtype == "bfloat16"
               else torch.autocast(device.type, enabled=False))

        def step():
            with amp:
                out = model(x, x)
            (out.loss + out.aux_loss).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
        tokens = case.batch_size * cfg.seq_len
        peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        queue.put({"ok": True, "tokens_per_s": tokens / dt, "step_s": dt, "peak_mem_bytes": peak,
                   "flops_per_token": cfg.flops_per_token(), **cfg.param_counts(),
                   "achieved_tflops": cfg.flops_per_token() * tokens / dt / 1e12})
    except Exception as e:  # noqa: BLE001 - report the failure as a row, keep benchmarking
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})


def run_case(case: Case, steps: int, warmup: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(case, steps, warmup, q))
    p.start()
    res = q.get()
    p.join()
    return {**asdict(case), **res}


def print_table(rows: list[dict]) -> None:
    head = f"{'case':<34} {'params (total/active)':>22} {'tokens/s':>10} {'TFLOP/s':>8} {'peak MiB':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if not r["ok"]:
            print(f"{r['name']:<34} FAILED: {r['error']}")
            continue
        params = f"{r['n_total'] / 1e6:.2f}M/{r['n_active'] / 1e6:.2f}M"
        print(f"{r['name']:<34} {params:>22} {r['tokens_per_s']:>10.0f} {r['achieved_tflops']:>8.3f} "
              f"{r['peak_mem_bytes'] / 2**20:>9.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_throughput.json"))
    args = ap.parse_args(argv)
    import torch
    rows = [run_case(c, args.steps, args.warmup) for c in cpu_cases()]
    print_table(rows)
    meta = {"machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
            "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
