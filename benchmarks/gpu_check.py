"""One-command GPU check (issue #13): parity tests, throughput, a bf16 + compile training run
and the environment, on one H100/H200, in under 9 minutes, into one output folder.

    benchmarks/gpu_check.sh --out "$OUT"            # the check (benchmarks/gpu_check.sh execs this file)
    benchmarks/gpu_check.sh --dry-run               # on any machine: the plan, and every command checked on CPU
    benchmarks/gpu_check.sh --out DIR --parts train,throughput --throughput-filter 'moe_1b'   # a rerun of some

Parts, in this order, each in its own processes with its own timeout, under one time budget
(--budget, default 530 s); a part that fails or runs out of time does not stop the others:

    env         nvidia-smi, torch / CUDA / cuDNN / Triton / transformers versions, installed packages
    parity      python -m pytest -m gpu (every test file that carries @pytest.mark.gpu)
    train       python train.py hardware=gpu (default MoE, embedded corpus, bf16 + compile, 250 steps):
                its final validation loss must be below LOSS_BOUND
    throughput  benchmarks/throughput.py --suite gpu, one process per case, in priority order:
                ours compiled, transformers eager, ours eager (required), then transformers
                compiled (optional, if time is left)

Output folder (7 small files, what the device tool brings back): env.json, parity.txt,
train.log, train.json, throughput.json, summary.json, summary.md. The summary is rewritten
after every part, so a check killed midway still says what it had done. Exit code 0 when
every part passed, 1 when one failed (or a required throughput case did not run), 2 for a
usage error; --dry-run exits 1 when one of its checks fails.

The project need not be pip-installed: every child process gets PYTHONPATH=<link dir>:<repo>,
where <link dir>/lrscale is a symbolic link to this checkout (the repository root has no
__init__.py, so `lrscale` is a namespace package whose `lrscale.models` is ./models). Missing
pure-Python packages (hydra-core, omegaconf, antlr4) travel as wheels: benchmarks/fetch_gpu_wheels.sh.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

PARTS = ("env", "parity", "train", "throughput")
BUDGET_S = 530            # the whole check: 8 min 50 s, inside the 9 minutes and a device command's 10
STOP_MARGIN_S = 8         # kept back at the end for the summary
OUT_FILES = ("env.json", "parity.txt", "train.log", "train.json", "throughput.json", "summary.json", "summary.md")

# Estimated seconds on one H100/H200 (first guesses, never measured: no GPU has run this yet;
# summary.json records the real ones next to them) and each part's own timeout.
ESTIMATE_S = {"env": 10, "parity": 100, "train": 90}
TIMEOUT_S = {"env": 60, "parity": 210, "train": 180}
CASE_TIMEOUT_S = 150
CASE_MIN_S = 25           # a case is not started with less time than this left

# ---- training run -----------------------------------------------------------------------------
# The default run (`python train.py`: moe_tiny, sp, AdamW 3e-3, WSD, embedded corpus, vocabulary
# 4096, 250 steps x 16 x 128 tokens, eval every 50 steps on 8 batches) moved to the GPU in
# bf16 + compile. The same overrides on CPU in fp32 (hardware.num_threads=1) ended at a final
# validation loss of 4.983 on CPython 3.11.7's stdlib, 4.999 on CPython 3.12.1's, and 4.900 on
# 3.12.1's without test/, idlelib/, tkinter/, lib2to3/, turtledemo/ (what a Debian/Ubuntu
# image's stdlib holds; the GPU machine runs Python 3.12.3, whose corpus is one of these).
# Before the WSD decay those runs stood at 5.12-5.21 (step 200) and 5.19-5.37 (step 150).
# LOSS_BOUND = 5.3 leaves 0.3 nat above the worst CPU result for bf16 and the interpreter's
# corpus, and is 3 nats below an untrained model (ln 4096 = 8.32): a run that does not learn,
# diverges, or ends where the CPU run stood 50-100 steps before its end fails.
TRAIN_STEPS = 250
LOSS_BOUND = 5.3
TRAIN_OVERRIDES = [
    "hardware=gpu", "model=moe_tiny", "data=embedded", f"train.steps={TRAIN_STEPS}", "train.ckpt_every=0",
    "run.keep_checkpoint=false", "logging.progress=false", "logging.print_param_table=false",
]
TRAIN_WARMUP_STEPS = 50   # tokens/s and MFU: median over logged steps after this (compilation happens before)

# ---- throughput cases -------------------------------------------------------------------------
# (case name in benchmarks/throughput.py gpu_cases(), required, estimated seconds: process start,
# CPU init of the weights, compilation, 3 warmup + 20 timed steps). Priority order: when the
# budget runs out the rest become 'not_run' rows.
THROUGHPUT_CASES = [
    ("moe_1b/sdpa+grouped_mm+compile", True, 60),
    ("dense_1b/sdpa+compile", True, 50),
    ("dense_125m/sdpa+compile", True, 40),
    ("moe_1b/transformers/sdpa", True, 25),
    ("dense_1b/transformers/sdpa", True, 25),
    ("dense_125m/transformers/sdpa", True, 15),
    ("moe_1b/sdpa+grouped_mm", True, 20),
    ("dense_1b/sdpa", True, 20),
    ("dense_125m/sdpa", True, 12),
    ("moe_1b/transformers/sdpa+compile", False, 70),
    ("dense_1b/transformers/sdpa+compile", False, 55),
    ("dense_125m/transformers/sdpa+compile", False, 45),
]
THROUGHPUT_STEPS, THROUGHPUT_WARMUP = 20, 3
THROUGHPUT_FLAGS = ("--suite", "--no-isolate", "--filter", "--steps", "--warmup", "--out", "--note")

ENV_PACKAGES = ("torch", "triton", "transformers", "numpy", "tokenizers", "hydra-core", "omegaconf",
                "antlr4-python3-runtime", "PyYAML", "pytest", "pluggy", "flash-attn", "megablocks", "grouped_gemm")
WHEELS = ("hydra_core-1.3.8-", "omegaconf-2.3.1-", "antlr4_python3_runtime-4.9.3-")  # fetch_gpu_wheels.sh

ENV_PROBE = r"""
import importlib.metadata as md, json, os, platform, sys
info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "cpu_count": os.cpu_count()}
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["cuda_available"] = torch.cuda.is_available()
    info["devices"] = []
    for i in range(torch.cuda.device_count() if info["cuda_available"] else 0):
        p = torch.cuda.get_device_properties(i)
        info["devices"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                "multiprocessors": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1)})
    try:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if info["cuda_available"] else None
    except Exception as e:  # a build without NCCL
        info["nccl"] = f"unavailable ({type(e).__name__})"
except Exception as e:  # torch missing or broken: say so, the rest still runs
    info["torch_error"] = f"{type(e).__name__}: {e}"
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
info["packages"] = {n: version(n) for n in sys.argv[1:]}
info["installed"] = sorted({f"{d.metadata['Name']}=={d.version}" for d in md.distributions() if d.metadata["Name"]},
                           key=str.lower)
print(json.dumps(info))
"""

VALIDATE_TRAIN_CONFIG = r"""
import json, sys
from hydra import compose, initialize_config_dir
import train  # registers the structured configs
from lrscale.training.config import to_object
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("train", overrides=sys.argv[2:])
c = to_object(cfg)  # every group's validation, as train.py runs it first
print(json.dumps({"device": c.hardware.device, "dtype": c.hardware.dtype, "compile": c.hardware.compile,
                  "model": c.model.name, "moe_experts": c.model.moe.num_experts, "source": c.data.source,
                  "vocab_size": c.data.tokenizer.vocab_size, "steps": c.train.steps}))
"""


# ---- running commands ------------------------------------------------------------------------

@dataclass
class Ran:
    rc: int | None            # None: killed at its timeout
    seconds: float
    output: str               # what it printed (stdout and stderr together)

    @property
    def timed_out(self) -> bool:
        return self.rc is None


Runner = Callable[[list, float, dict, Path], Ran]


def run_command(cmd: list, timeout: float, env: dict, log: Path) -> Ran:
    """Run `cmd` from the repository root in its own process group, output into `log`; at the
    timeout SIGTERM the whole group (train.py finishes its step and exits), 5 s later SIGKILL
    whatever is left of it (compile workers included)."""
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            rc = None
            _signal_group(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p.pid, signal.SIGKILL)
            p.wait()
    return Ran(rc, time.perf_counter() - t0, log.read_text(errors="replace"))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def child_env(work: Path) -> dict:
    """The environment of every child: `lrscale` importable from this checkout without pip (a
    link <work>/path/lrscale -> repo), unbuffered output, no network attempts by HF libraries."""
    link_dir = work / "path"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "lrscale"
    if not link.is_symlink():
        link.symlink_to(REPO, target_is_directory=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(link_dir), str(REPO)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="true", LRSCALE_CACHE=str(work / "cache"))
    return env


def gpu_test_files() -> list[str]:
    """Every test file that carries the gpu marker (only those are collected: a collection
    error in an unrelated file, a package missing on the GPU machine, cannot stop the parity run)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(errors="replace"))


def parity_command(collect_only: bool = False) -> list:
    cmd = [PY, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider"]
    cmd += ["--collect-only"] if collect_only else ["-v", "-rfEs", "--tb=short", "--continue-on-collection-errors"]
    return cmd + gpu_test_files()


def train_command(work: Path) -> list:
    return [PY, "train.py", *TRAIN_OVERRIDES, f"run.root={work / 'runs'}"]


def throughput_command(name: str, out: Path) -> list:
    return [PY, "benchmarks/throughput.py", "--suite", "gpu", "--no-isolate", "--filter", f"^{re.escape(name)}$",
            "--steps", str(THROUGHPUT_STEPS), "--warmup", str(THROUGHPUT_WARMUP), "--out", str(out),
            "--note", "benchmarks/gpu_check.py"]


def show(cmd: list) -> str:
    """A command as one could paste it (the interpreter written as python3)."""
    import shlex
    return " ".join(["python3" if c == PY else shlex.quote(str(c)) for c in cmd])


def throughput_module():
    """benchmarks/throughput.py loaded by path (its top level imports the standard library only)."""
    spec = importlib.util.spec_from_file_location("_gpu_check_throughput", REPO / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


# ---- parsing -----------------------------------------------------------------------------------

def parse_pytest(output: str) -> dict:
    """Counts from pytest's last summary line, and the skip reasons of `-rs`."""
    counts: dict[str, int] = {}
    for line in reversed(output.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)", line)
        if found and re.search(r"\bin [\d.]+s", line):
            for n, what in found:
                what = {"error": "errors", "warning": "warnings"}.get(what, what)
                counts[what] = counts.get(what, 0) + int(n)
            break
    skips = [{"count": int(n), "where": where, "reason": why}
             for n, where, why in re.findall(r"^SKIPPED \[(\d+)\] (.+?): (.*)$", output, flags=re.M)]
    return {"counts": counts, "skips": skips}


def parse_collected(output: str) -> tuple[int, list[str]]:
    """How many tests `pytest --collect-only` selected ("20/85 tests collected"), and their ids
    when it listed them (-q, which the project's addopts holds)."""
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", output)
    ids = [line.strip() for line in output.splitlines() if "::" in line and not line.startswith(" ")]
    return (int(m.group(1)) if m else len(ids)), ids


# ---- the parts ---------------------------------------------------------------------------------

@dataclass
class Part:
    name: str
    status: str = "pending"   # passed | failed | skipped | pending
    seconds: float = 0.0
    estimate_s: float = 0.0
    detail: str = ""
    command: str = ""


@dataclass
class Check:
    out: Path
    work: Path
    budget_s: float
    runner: Runner = run_command
    parts: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)   # per part: the numbers summary.md shows
    t0: float = field(default_factory=time.perf_counter)
    argv: list = field(default_factory=list)

    def left(self) -> float:
        return self.budget_s - STOP_MARGIN_S - (time.perf_counter() - self.t0)

    def run(self, cmd: list, timeout: float, log: Path) -> Ran:
        return self.runner(cmd, min(timeout, max(self.left(), 1)), child_env(self.work), log)


def part_env(ck: Check, part: Part) -> None:
    log = ck.work / "env.log"
    smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit",
           "--format=csv,noheader"]
    info: dict = {"gpu_check": {"argv": ck.argv, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, "source": source_state()}
    if shutil.which("nvidia-smi"):
        q = ck.run(smi, 30, log)
        info["nvidia_smi_query"] = q.output.strip().splitlines() if q.rc == 0 else None
        full = ck.run(["nvidia-smi"], 30, ck.work / "nvidia-smi.log")
        m = re.search(r"Driver Version:\s*([\d.]+).*?CUDA Version:\s*([\d.]+)", full.output)
        info["driver"], info["driver_cuda"] = (m.group(1), m.group(2)) if m else (None, None)
        info["nvidia_smi"] = full.output.strip().splitlines()[:20]
    else:
        info["nvidia_smi_query"] = None
        info["driver"] = info["driver_cuda"] = None
    probe = ck.run([PY, "-c", ENV_PROBE, *ENV_PACKAGES], TIMEOUT_S["env"], ck.work / "probe.log")
    try:
        info.update(json.loads(probe.output.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        info["probe_error"] = tail(probe.output, 2000)
    (ck.out / "env.json").write_text(json.dumps(info, indent=2) + "\n")
    gpu = (info.get("devices") or [{}])[0].get("name")
    ck.results["env"] = {k: info.get(k) for k in ("torch", "torch_cuda", "cudnn", "driver", "driver_cuda", "python")}
    ck.results["env"].update(gpu=gpu, transformers=(info.get("packages") or {}).get("transformers"),
                             triton=(info.get("packages") or {}).get("triton"))
    part.command = f"{' '.join(smi)}; nvidia-smi; python3 -c <ENV_PROBE>"
    if "probe_error" in info or "torch_error" in info:
        part.status, part.detail = "failed", "the Python probe failed: " + (info.get("torch_error") or "see env.json")
    elif not info.get("cuda_available"):
        part.status, part.detail = "failed", "torch sees no CUDA device: nothing below can pass"
    else:
        part.status = "passed"
        part.detail = (f"{gpu}, driver {info['driver']}, torch {info['torch']} (CUDA {info['torch_cuda']}, "
                       f"cuDNN {info['cudnn']})")


def part_parity(ck: Check, part: Part) -> None:
    cmd = parity_command()
    part.command = show(cmd)
    log = ck.out / "parity.txt"
    log.write_text(f"$ {part.command}\n\n")
    ran = ck.run(cmd, TIMEOUT_S["parity"], log)
    res = parse_pytest(ran.output)
    c = res["counts"]
    ck.results["parity"] = {**res, "rc": ran.rc}
    if ran.timed_out:
        part.status, part.detail = "failed", f"timed out after {ran.seconds:.0f} s ({c or 'no summary line'})"
        with open(log, "a") as f:
            f.write(f"\n[gpu_check] killed after {ran.seconds:.0f} s\n")
        return
    counts = ", ".join(f"{n} {k}" for k, n in c.items() if k != "deselected") or "no summary line"
    skipped = "; ".join(f"{s['where']}: {s['reason']}" for s in res["skips"])
    ok = ran.rc == 0 and c.get("passed", 0) > 0 and not c.get("failed") and not c.get("errors")
    part.status = "passed" if ok else "failed"
    part.detail = counts + (f" (skipped: {skipped})" if skipped else "") + ("" if ok else f"; pytest exit {ran.rc}")


def _median(xs: list) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def part_train(ck: Check, part: Part) -> None:
    cmd = train_command(ck.work)
    part.command = show(cmd)
    log = ck.out / "train.log"
    log.write_text(f"$ {part.command}\n\n")
    ran = ck.run(cmd, TIMEOUT_S["train"], log)
    result: dict = {"command": part.command, "overrides": TRAIN_OVERRIDES, "loss_bound": LOSS_BOUND,
                    "rc": ran.rc, "seconds": ran.seconds}
    runs = sorted(p for p in (ck.work / "runs").glob("*") if p.is_dir())
    if runs:  # a run killed midway has metrics but no summary: keep what it logged
        run_dir = runs[-1]
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
            if (run_dir / "metrics.jsonl").exists() else []
        steady = [r for r in rows if "tokens_per_s" in r and r["step"] > TRAIN_WARMUP_STEPS]
        peak = run_dir / "peak_flops.json"
        result.update(
            status=summary.get("status"), final_val_loss=summary.get("final_val_loss"),
            best_val_loss=summary.get("best_val_loss"), steps=summary.get("steps"), tokens=summary.get("tokens"),
            wall_time_s=summary.get("wall_time_s"),
            tokens_per_s_median=_median([r["tokens_per_s"] for r in steady]),
            tflops_median=_median([r.get("tflops") for r in steady]), mfu_median=_median([r.get("mfu") for r in steady]),
            tokens_per_s_overall=(summary["tokens"] / summary["wall_time_s"]) if summary.get("wall_time_s") else None,
            val_loss=[[r["step"], r["val_loss"]] for r in rows if "val_loss" in r],
            peak=json.loads(peak.read_text()) if peak.exists() else None,
            summary=summary, metrics=[{k: v for k, v in r.items() if k != "moe/tokens_per_expert"} for r in rows])
    ck.results["train"] = {k: result.get(k) for k in ("status", "final_val_loss", "loss_bound", "tokens_per_s_median",
                                                       "mfu_median", "tflops_median", "wall_time_s", "val_loss")}
    (ck.out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    loss = result.get("final_val_loss")
    if ran.timed_out:
        part.status, part.detail = "failed", f"timed out after {ran.seconds:.0f} s"
    elif ran.rc != 0 or result.get("status") != "completed":
        part.status = "failed"
        part.detail = f"train.py exit {ran.rc}, run status {result.get('status')}: see train.log"
    elif loss is None or not loss < LOSS_BOUND:
        part.status, part.detail = "failed", f"final validation loss {loss} is not below the bound {LOSS_BOUND}"
    else:
        part.status = "passed"
        tps, mfu = result.get("tokens_per_s_median"), result.get("mfu_median")
        part.detail = (f"final validation loss {loss:.3f} < {LOSS_BOUND} after {result['steps']} steps"
                       + (f"; {tps:,.0f} tokens/s" if tps else "") + (f", MFU {100 * mfu:.2f}%" if mfu else ""))


def add_vs_transformers(rows: list[dict]) -> None:
    """Our tokens/s over the best transformers row of the same model (what throughput.py computes
    inside one invocation; here the cases ran one per invocation)."""
    best: dict[str, float] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("impl") == "transformers":
            model = r["name"].split("/")[0]
            best[model] = max(best.get(model, 0.0), r["tokens_per_s"])
    for r in rows:
        model = r["name"].split("/")[0]
        if r.get("status") == "ok" and r.get("impl") == "ours" and model in best:
            r["vs_transformers"] = r["tokens_per_s"] / best[model]


def part_throughput(ck: Check, part: Part, cases: list[tuple[str, bool, int]]) -> None:
    tp = throughput_module()
    known = {c.name for c in tp.gpu_cases()}
    rows, metas = [], []
    part.command = show(throughput_command("<case>", ck.work / "tp" / "<i>.json"))
    (ck.work / "tp").mkdir(parents=True, exist_ok=True)
    for i, (name, required, estimate) in enumerate(cases):
        row: dict = {"name": name, "required": required, "estimate_s": estimate}
        left = ck.left()
        if name not in known:
            row.update(status="failed", error="no such case in benchmarks/throughput.py gpu_cases()")
        elif left < CASE_MIN_S:
            row.update(status="not_run", error=f"time budget: {max(left, 0):.0f} s left")
        else:
            out = ck.work / "tp" / f"{i:02d}.json"
            ran = ck.run(throughput_command(name, out), CASE_TIMEOUT_S, ck.work / "tp" / f"{i:02d}.log")
            row["wall_s"] = round(ran.seconds, 1)
            got = json.loads(out.read_text()) if out.exists() else None
            if got and got.get("results"):
                row.update({k: v for k, v in got["results"][0].items() if k != "required"})
                metas.append(got.get("meta", {}))
                if row.get("status") == "failed":
                    row["log_tail"] = tail(ran.output)
            else:
                why = (f"killed after {ran.seconds:.0f} s" + (" (the check's time budget)" if left < CASE_TIMEOUT_S else "")
                       if ran.timed_out else f"exit {ran.rc}, no result")
                row.update(status="failed", error=why, log_tail=tail(ran.output))
        rows.append(row)
        print(f"[gpu_check] throughput {name}: {row['status']}"
              + (f" {row['tokens_per_s']:,.0f} tokens/s" if row.get("tokens_per_s") else "")
              + (f" ({row['error'][:120]})" if row.get("error") else "") + f" [{row.get('wall_s', 0):.0f} s]", flush=True)
    add_vs_transformers(rows)
    peak = next((m["peak"]["peak_tflops"] for m in metas if m.get("peak")), None)
    for r in rows:
        if r.get("status") == "ok" and peak and "achieved_tflops" in r:
            r["mfu"] = r["achieved_tflops"] / peak
    try:
        targets = tp.check_targets([r for r in rows if "impl" in r])
    except Exception as e:  # noqa: BLE001 - the benchmark's internals may move; the rows stay
        targets = {"error": f"{type(e).__name__}: {e}"}
    (ck.out / "throughput.json").write_text(json.dumps(
        {"meta": {**(metas[0] if metas else {}), "gpu_check": {"steps": THROUGHPUT_STEPS, "warmup": THROUGHPUT_WARMUP,
                                                              "one_process_per_case": True}},
         "targets": targets, "results": rows}, indent=2) + "\n")
    ck.results["throughput"] = rows

    def good(r):  # a transformers row may be skipped (transformers not importable); ours must run
        return r["status"] == "ok" or (r["status"] == "skipped" and "transformers" in r["name"])
    missing = [r for r in rows if r["required"] and not good(r)]
    optional_bad = [r for r in rows if not r["required"] and r["status"] == "failed"]
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    part.status = "failed" if missing or not rows else "passed"
    part.detail = ", ".join(f"{n} {s}" for s, n in counts.items())
    if missing:
        part.detail += "; required not ok: " + ", ".join(f"{r['name']} ({r['status']})" for r in missing)
    if optional_bad:
        part.detail += "; optional failed: " + ", ".join(r["name"] for r in optional_bad)


# ---- summary -----------------------------------------------------------------------------------

def source_state() -> dict:
    """Which code ran: git (when the copy has .git) and a digest of every .py/.yaml/.toml file
    (the device's copy of the tree has no history; `--dry-run` prints the digest of a checkout)."""
    h = hashlib.sha256()
    n = 0
    skip = {"__pycache__", "runs", "sweeps", "outputs", "multirun", "lrscale.egg-info"}
    for top, dirs, names in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip)
        for name in sorted(names):
            if name.endswith((".py", ".yaml", ".toml")):
                p = Path(top, name)
                h.update(p.relative_to(REPO).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
                n += 1
    state = {"digest": h.hexdigest()[:16], "files": n, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            state["commit"] = commit.stdout.strip()
            st = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
            state["dirty"] = bool(st.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return state


def write_summary(ck: Check) -> bool:
    ok = all(p.status == "passed" for p in ck.parts.values() if p.status != "skipped")
    done = all(p.status != "pending" for p in ck.parts.values())
    elapsed = time.perf_counter() - ck.t0
    data = {"ok": ok and done, "finished": done, "seconds": round(elapsed, 1), "budget_s": ck.budget_s,
            "argv": ck.argv, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "parts": {n: asdict(p) for n, p in ck.parts.items()}, "results": ck.results}
    (ck.out / "summary.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    lines = [f"# GPU check: {'PASSED' if data['ok'] else ('FAILED' if done else 'RUNNING (partial)')}", "",
             f"`{' '.join(ck.argv)}`, {elapsed:.0f} s of a {ck.budget_s:.0f} s budget, {data['date']}."]
    env = ck.results.get("env")
    if env:
        lines += ["", f"{env.get('gpu')}; driver {env.get('driver')} (CUDA {env.get('driver_cuda')}); torch "
                  f"{env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}); triton "
                  f"{env.get('triton')}; transformers {env.get('transformers')}; Python {env.get('python')}."]
    lines += ["", "| part | status | seconds (estimate) | detail |", "| --- | --- | --- | --- |"]
    for p in ck.parts.values():
        lines.append(f"| {p.name} | {p.status} | {p.seconds:.0f} ({p.estimate_s:.0f}) | {p.detail} |")
    tr = ck.results.get("train")
    if tr and tr.get("final_val_loss") is not None:
        vals = ", ".join(f"{s}: {v:.3f}" for s, v in tr.get("val_loss") or [])
        lines += ["", f"Training (`train.py {' '.join(TRAIN_OVERRIDES)}`): status {tr['status']}, final validation "
                  f"loss {tr['final_val_loss']:.4f} (bound {LOSS_BOUND}); validation loss by step {vals}."]
        if tr.get("tokens_per_s_median"):
            lines[-1] += (f" Median after step {TRAIN_WARMUP_STEPS}: {tr['tokens_per_s_median']:,.0f} tokens/s, "
                          f"{tr.get('tflops_median') or 0:.3f} TFLOP/s, MFU {100 * (tr.get('mfu_median') or 0):.2f}%.")
    rows = ck.results.get("throughput")
    if rows:
        lines += ["", "| case | status | tokens/s | MFU | vs transformers | peak GiB | seconds |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if r["status"] == "ok":
                lines.append(f"| {r['name']} | ok | {r['tokens_per_s']:,.0f} | {100 * r.get('mfu', 0):.1f}% | "
                             + (f"{r['vs_transformers']:.2f}x" if "vs_transformers" in r else "-")
                             + f" | {r.get('peak_mem_bytes', 0) / 2**30:.1f} | {r.get('wall_s', 0):.0f} |")
            else:
                lines.append(f"| {r['name']} | {r['status']}{'' if r['required'] else ' (optional)'} | "
                             f"{(r.get('error') or '')[:100]} | | | | {r.get('wall_s', 0):.0f} |")
    (ck.out / "summary.md").write_text("\n".join(lines) + "\n")
    return data["ok"]


def run_check(args, runner: Runner = run_command) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    stale = [n for n in OUT_FILES if (args.out / n).exists()]
    for n in stale:  # a rerun into the same folder: no file of an earlier check survives unrewritten
        (args.out / n).unlink()
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    ck = Check(out=args.out, work=work, budget_s=args.budget, runner=runner,
               argv=[show([PY]), *getattr(args, "argv", sys.argv)])
    cases = selected_cases(args.throughput_filter)
    for name in PARTS:
        est = sum(c[2] for c in cases) if name == "throughput" else ESTIMATE_S[name]
        ck.parts[name] = Part(name, estimate_s=est, status="pending" if name in args.parts else "skipped",
                              detail="" if name in args.parts else "not selected (--parts)")
    write_summary(ck)
    try:
        for name in PARTS:
            part = ck.parts[name]
            if part.status == "skipped":
                continue
            print(f"[gpu_check] {name}: running ({ck.left():.0f} s left)", flush=True)
            t = time.perf_counter()
            try:
                if ck.left() < 5:
                    part.status, part.detail = "failed", "not started: the time budget is spent"
                elif name == "throughput":
                    part_throughput(ck, part, cases)
                else:
                    {"env": part_env, "parity": part_parity, "train": part_train}[name](ck, part)
            except Exception as e:  # noqa: BLE001 - one part's bug must not cost the others
                part.status, part.detail = "failed", f"gpu_check error: {type(e).__name__}: {e}"
            part.seconds = time.perf_counter() - t
            print(f"[gpu_check] {name}: {part.status} in {part.seconds:.0f} s; {part.detail}", flush=True)
            write_summary(ck)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    ok = write_summary(ck)
    print((ck.out / "summary.md").read_text())
    return 0 if ok else 1


def selected_cases(regex: str) -> list[tuple[str, bool, int]]:
    return [c for c in THROUGHPUT_CASES if re.search(regex, c[0])]


# ---- dry run -----------------------------------------------------------------------------------

def dry_run(args) -> int:
    """The plan and the commands, each checked on this machine without CUDA: inputs exist,
    arguments parse, the training config composes and validates, the gpu tests are collected."""
    work = Path(tempfile.mkdtemp(prefix="gpu_check-dry-"))
    env = child_env(work)
    cases = selected_cases(args.throughput_filter)
    checks: dict[str, dict] = {}

    def check(name: str, ok: bool, detail: str) -> None:
        checks[name] = {"ok": bool(ok), "detail": detail}

    for rel in ("train.py", "benchmarks/throughput.py", "configs/train.yaml", "configs/model/moe_tiny.yaml",
                "configs/hardware/gpu.yaml", "configs/data/embedded.yaml"):
        check(f"exists {rel}", (REPO / rel).is_file(), rel)
    files = gpu_test_files()
    check("gpu test files", bool(files), ", ".join(files) or "no tests/test_*.py carries pytest.mark.gpu")
    try:
        known = {c.name for c in throughput_module().gpu_cases()}
        absent = [c[0] for c in cases if c[0] not in known]
        check("throughput cases exist", not absent, f"{len(cases)} cases" + (f"; unknown: {absent}" if absent else ""))
    except Exception as e:  # noqa: BLE001
        check("throughput cases exist", False, f"benchmarks/throughput.py did not load: {type(e).__name__}: {e}")

    train_cmd = train_command(work)
    # Run together (each imports torch: in parallel they take about the time of one). The env
    # probe shares the validation's interpreter: its JSON line comes last.
    probe = f"\nsys.argv = [''] + {list(ENV_PACKAGES)!r}\n" + ENV_PROBE
    commands = {
        "parity collection": parity_command(collect_only=True),
        "train --cfg job": train_cmd[:2] + ["--cfg", "job"] + train_cmd[2:],
        "train config validates": [PY, "-c", VALIDATE_TRAIN_CONFIG + probe, str(REPO / "configs"), *train_cmd[2:]],
        "throughput --help": [PY, "benchmarks/throughput.py", "--help"],
    }
    procs = {k: subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, c in commands.items()}
    outs = {}
    for k, p in procs.items():
        try:
            outs[k] = (p.communicate(timeout=120)[0], p.returncode)
        except subprocess.TimeoutExpired:
            p.kill()
            outs[k] = (p.communicate()[0], None)
    shutil.rmtree(work, ignore_errors=True)

    out, rc = outs["train config validates"]
    try:
        probe = json.loads(out.strip().splitlines()[-1])
        check("env probe", rc == 0 and "torch" in probe,
              f"torch {probe.get('torch')}, CUDA available: {probe.get('cuda_available')}, "
              f"transformers {probe['packages'].get('transformers')}")
    except (ValueError, IndexError, KeyError):
        check("env probe", False, tail(out, 1500))
    out, rc = outs["parity collection"]
    n_collected, collected = parse_collected(out)
    check("parity collection", rc == 0 and n_collected > 0, f"{n_collected} gpu tests collected"
          if rc == 0 else f"pytest exit {rc}: {tail(out, 1500)}")
    out, rc = outs["train --cfg job"]
    composed: dict = {}
    try:
        import yaml
        composed = yaml.safe_load(out) if rc == 0 else {}
    except Exception as e:  # noqa: BLE001
        out = f"{out}\n(could not parse: {e})"
    hw = (composed or {}).get("hardware", {})
    want = {"device": "cuda", "dtype": "bfloat16", "compile": True}
    check("train --cfg job", rc == 0 and all(hw.get(k) == v for k, v in want.items())
          and composed.get("model", {}).get("name") == "moe_tiny" and composed.get("data", {}).get("source") == "embedded"
          and composed.get("train", {}).get("steps") == TRAIN_STEPS,
          f"hardware {json.dumps({k: hw.get(k) for k in want})}, model {composed.get('model', {}).get('name')}, "
          f"data {composed.get('data', {}).get('source')}, steps {composed.get('train', {}).get('steps')}"
          if rc == 0 else f"exit {rc}: {tail(out, 1500)}")
    out, rc = outs["train config validates"]
    try:
        valid = json.loads(out.strip().splitlines()[-2])
        check("train config validates", rc == 0 and valid["device"] == "cuda" and valid["dtype"] == "bfloat16"
              and valid["compile"] is True, json.dumps(valid))
    except (ValueError, IndexError, KeyError):
        valid = {}
        check("train config validates", False, tail(out, 1500))
    out, rc = outs["throughput --help"]
    absent = [f for f in THROUGHPUT_FLAGS if f not in out]
    check("throughput --help", rc == 0 and not absent, "flags " + " ".join(THROUGHPUT_FLAGS)
          + (f"; missing: {absent}" if absent else ""))
    wheels = sorted(p.name for p in (REPO / ".whl").glob("*.whl")) if (REPO / ".whl").is_dir() else []
    missing_wheels = [w for w in WHEELS if not any(n.startswith(w) for n in wheels)]

    estimate = sum(ESTIMATE_S.values()) + sum(c[2] for c in cases)
    required = sum(ESTIMATE_S.values()) + sum(c[2] for c in cases if c[1])
    plan = {
        "parts": list(PARTS), "budget_s": args.budget, "estimate_s": estimate, "required_estimate_s": required,
        "commands": {
            "env": ["nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit "
                    "--format=csv,noheader", "nvidia-smi", "python3 -c <ENV_PROBE>"],
            "parity": [show(parity_command())],
            "train": [show(train_command(Path("<tmp>")))],
            "throughput": [show(throughput_command(c[0], Path(f"<tmp>/tp/{i:02d}.json"))) for i, c in enumerate(cases)],
        },
        "timeouts_s": {**TIMEOUT_S, "throughput_case": CASE_TIMEOUT_S},
        "estimates_s": {**ESTIMATE_S, "throughput": {c[0]: c[2] for c in cases}},
        "throughput_cases": [{"name": c[0], "required": c[1], "estimate_s": c[2]} for c in cases],
        "parity_tests": collected, "parity_count": n_collected, "train_config": valid, "loss_bound": LOSS_BOUND, "train_steps": TRAIN_STEPS,
        "wheels": {"present": wheels, "missing": missing_wheels}, "source": source_state(),
        "checks": checks, "ok": all(c["ok"] for c in checks.values()),
    }
    print(render_plan(plan))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    return 0 if plan["ok"] else 1


def render_plan(plan: dict) -> str:
    c = plan["commands"]
    lines = [f"GPU check plan: parts {', '.join(plan['parts'])}; budget {plan['budget_s']:.0f} s; estimated "
             f"{plan['required_estimate_s']} s for the required work, {plan['estimate_s']} s with the optional cases "
             "(estimates, never measured on a GPU)", "",
             f"env         ~{plan['estimates_s']['env']} s (timeout {plan['timeouts_s']['env']} s)"]
    lines += [f"    {x}" for x in c["env"]]
    lines += [f"parity      ~{plan['estimates_s']['parity']} s (timeout {plan['timeouts_s']['parity']} s), "
              f"{plan['parity_count']} tests", f"    {c['parity'][0]}",
              f"train       ~{plan['estimates_s']['train']} s (timeout {plan['timeouts_s']['train']} s), passes when "
              f"the final validation loss < {plan['loss_bound']}", f"    {c['train'][0]}",
              f"throughput  one process per case, in this order (timeout {plan['timeouts_s']['throughput_case']} s "
              "each, none started with under 25 s of budget left)"]
    for case, cmd in zip(plan["throughput_cases"], c["throughput"]):
        lines.append(f"    ~{case['estimate_s']:>3} s {'required' if case['required'] else 'optional'}  {cmd}")
    lines += ["", "checks on this machine:"]
    for name, r in plan["checks"].items():
        lines.append(f"    [{'ok' if r['ok'] else 'FAIL'}] {name}: {r['detail']}")
    w = plan["wheels"]
    lines.append(f"    [info] .whl/: {', '.join(w['present']) or 'empty'}"
                 + (f"; missing for the device: {', '.join(w['missing'])} (benchmarks/fetch_gpu_wheels.sh)"
                    if w["missing"] else ""))
    s = plan["source"]
    lines.append(f"    [info] source digest {s['digest']} ({s['files']} files), commit {s['commit']}, dirty {s['dirty']}")
    lines.append(f"dry run: {'OK' if plan['ok'] else 'FAILED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (required unless --dry-run; on the device: $OUT)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and check every command on this machine")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--throughput-filter", default="", help="regex: keep the throughput cases whose names match")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole check (default {BUDGET_S})")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (run dirs, case logs)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        ap.error(f"--parts {args.parts!r}: name one or more of {', '.join(PARTS)}")
    args.parts = parts
    args.argv = ["benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]
    if args.dry_run:
        return dry_run(args)
    if args.out is None:
        ap.error("--out DIR is required (on the device: --out \"$OUT\")")
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
