"""benchmarks/gpu_check.sh (issue #13's one-command GPU check), as far as a machine without a
GPU allows: the dry run checks every command on CPU; the real check, run here, fails naming the
missing GPU and still writes its files; its parts' bookkeeping (pass/fail rules, the loss bound,
the throughput merge, the time budget) runs against a fake runner; and the offline fit grid
composes."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrscale.benchmarks import gpu_check as gc

REPO = Path(__file__).resolve().parents[1]
MODELS = ("dense_125m", "dense_1b", "moe_1b")


def test_dry_run_lists_every_part_and_a_bf16_compiled_cuda_training_run(tmp_path):
    """Through the shell wrapper, as the device command calls it."""
    out = tmp_path / "out"
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                       cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                       timeout=180)
    plan = json.loads((out / "plan.json").read_text())
    failed = {k: v for k, v in plan["checks"].items() if not v["ok"]}
    assert p.returncode == 0 and not failed, (failed, p.stdout[-3000:], p.stderr[-3000:])
    assert plan["parts"] == ["env", "parity", "train", "throughput"]
    assert "dry run: OK" in p.stdout
    for name in plan["checks"]:
        assert f"[ok] {name}" in p.stdout

    # parity: every gpu-marked test is collected, from every file that carries the marker
    assert plan["parity_count"] >= 20
    assert "-m gpu" in plan["commands"]["parity"][0]
    for f in ("tests/test_backends.py", "tests/test_hardware.py"):
        assert f in plan["commands"]["parity"][0]

    # train: the default MoE on the embedded corpus, composed AND validated as bf16 + compile on CUDA
    assert plan["train_config"] == {"device": "cuda", "dtype": "bfloat16", "compile": True, "model": "moe_tiny",
                                    "moe_experts": 8, "source": "embedded", "vocab_size": 4096,
                                    "steps": gc.TRAIN_STEPS}
    assert "hardware=gpu" in plan["commands"]["train"][0]
    assert 4.0 < plan["loss_bound"] < 8.3  # below an untrained model's ln(4096)

    # throughput: each model compiled and not, ours and transformers
    names = [c["name"] for c in plan["throughput_cases"]]
    for model in MODELS:
        ours = [n for n in names if n.startswith(model + "/") and "transformers" not in n]
        hf = [n for n in names if n.startswith(model + "/transformers/")]
        assert any(n.endswith("+compile") for n in ours) and any(not n.endswith("+compile") for n in ours), model
        assert hf, model
    assert len(plan["commands"]["throughput"]) == len(names)

    # the time budget: the required work is estimated inside it, the budget inside 9 minutes
    assert plan["required_estimate_s"] <= plan["budget_s"] - gc.STOP_MARGIN_S
    assert plan["budget_s"] <= 540
    assert sum(plan["timeouts_s"][k] for k in ("env", "parity", "train")) < plan["budget_s"]


def test_the_real_check_without_a_gpu_fails_naming_it_and_still_writes_its_files(tmp_path):
    """`--parts env` run for real on this machine: the probe runs; without CUDA the part, and the
    check, fail with the reason in summary.md (on a GPU machine the part passes)."""
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out), "--parts", "env"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    env = json.loads((out / "env.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert env["torch"] == torch.__version__ and env["packages"]["torch"]
    assert summary["finished"] and summary["parts"]["parity"]["status"] == "skipped"
    if torch.cuda.is_available():
        assert p.returncode == 0 and summary["ok"], p.stdout
    else:
        assert p.returncode == 1 and not summary["ok"]
        assert summary["parts"]["env"]["status"] == "failed"
        assert "no CUDA device" in (out / "summary.md").read_text()
    assert {f.name for f in out.iterdir()} == {"env.json", "summary.json", "summary.md"}


# ---- the parts against a fake runner --------------------------------------------------------

PYTEST_OUT = """tests/test_backends.py::test_cuda_attention_backend_matches_fp32_eager_bf16[sdpa-8-64] PASSED [  5%]
tests/test_hardware.py::test_cuda_peak_states_nominal_and_measures_bf16 SKIPPED (x) [100%]
=========================== short test summary info ============================
SKIPPED [1] tests/test_hardware.py:154: needs a CUDA device
================ 19 passed, 1 skipped, 65 deselected in 71.20s (0:01:11) ================
"""


def _arg(cmd: list, flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


class FakeDevice:
    """Answers each command the check runs as an H200 would (by what the command is)."""

    def __init__(self, final_loss=4.9, failing=(), hf_missing=False):
        self.final_loss, self.failing, self.hf_missing = final_loss, set(failing), hf_missing
        self.commands = []

    def __call__(self, cmd, timeout, env, log):
        self.commands.append(cmd)
        assert timeout > 0 and "lrscale" in os.listdir(env["PYTHONPATH"].split(os.pathsep)[0])
        if cmd[1] == "-c":  # the environment probe
            text = json.dumps({"python": "3.12.3", "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cudnn": 91000,
                               "cuda_available": True, "devices": [{"name": "NVIDIA H200"}],
                               "packages": {"transformers": "5.17.0", "triton": "3.6.0"}})
        elif cmd[1:3] == ["-m", "pytest"]:
            text = PYTEST_OUT
        elif cmd[1] == "train.py":
            run = Path(next(a for a in cmd if a.startswith("run.root=")).split("=", 1)[1]) / "moe_tiny-sp-x"
            run.mkdir(parents=True)
            rows = [{"step": s, "train_loss": 6.0, "tokens_per_s": 1e5 * s, "tflops": 1.0, "mfu": 0.001 * s}
                    for s in (10, 60, 70, 80)] + [{"step": 250, "val_loss": self.final_loss}]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run / "summary.json").write_text(json.dumps({"status": "completed", "final_val_loss": self.final_loss,
                                                          "best_val_loss": self.final_loss, "steps": 250,
                                                          "tokens": 512000, "wall_time_s": 10.0}))
            text = "[train] completed"
        else:  # benchmarks/throughput.py, one case
            name = re.sub(r"\\(.)", r"\1", _arg(cmd, "--filter")[1:-1])
            impl = "transformers" if "/transformers/" in name else "ours"
            if name in self.failing:
                row = {"name": name, "impl": impl, "status": "failed", "error": "OutOfMemoryError: boom"}
            elif impl == "transformers" and self.hf_missing:
                row = {"name": name, "impl": impl, "status": "skipped", "error": "transformers not installed"}
            else:
                tps = 2e5 if impl == "ours" else 1e5
                row = {"name": name, "impl": impl, "status": "ok", "tokens_per_s": tps, "achieved_tflops": 400.0,
                       "mfu": 0.4, "peak_mem_bytes": 2**34}
            Path(_arg(cmd, "--out")).write_text(json.dumps(
                {"meta": {"torch": "2.11.0", "peak": {"peak_tflops": 989.0}}, "results": [row]}))
            text = "wrote"
        with open(log, "a") as f:
            f.write(text)
        return gc.Ran(0, 0.01, log.read_text())


def _check(tmp_path, device, *extra):
    args = argparse.Namespace(out=tmp_path / "out", parts=list(gc.PARTS), throughput_filter="", budget=gc.BUDGET_S,
                              keep_work=False, argv=["benchmarks/gpu_check.py", "--out", "OUT"])
    for k, v in extra:
        setattr(args, k, v)
    rc = gc.run_check(args, runner=device)
    return rc, json.loads((args.out / "summary.json").read_text()), args.out


def test_a_passing_check_writes_seven_small_files_and_ratios_against_transformers(tmp_path):
    device = FakeDevice()
    rc, summary, out = _check(tmp_path, device)
    assert rc == 0 and summary["ok"], summary["parts"]
    assert sorted(f.name for f in out.iterdir()) == sorted(gc.OUT_FILES) and len(gc.OUT_FILES) <= 8
    assert all(f.stat().st_size < 1 << 20 for f in out.iterdir())
    assert [c[0] for c in device.commands[-len(gc.THROUGHPUT_CASES):]] == [sys.executable] * len(gc.THROUGHPUT_CASES)
    parts = summary["parts"]
    assert "19 passed, 1 skipped" in parts["parity"]["detail"] and "needs a CUDA device" in parts["parity"]["detail"]
    train = json.loads((out / "train.json").read_text())
    assert train["final_val_loss"] == 4.9 and train["tokens_per_s_median"] == 7e6  # steps 60, 70, 80: after warmup
    tp = json.loads((out / "throughput.json").read_text())
    rows = {r["name"]: r for r in tp["results"]}
    assert rows["moe_1b/sdpa+grouped_mm+compile"]["vs_transformers"] == pytest.approx(2.0)
    assert rows["dense_1b/sdpa+compile"]["mfu"] == pytest.approx(400 / 989)
    md = (out / "summary.md").read_text()
    assert md.startswith("# GPU check: PASSED") and "NVIDIA H200" in md and "| moe_1b/sdpa+grouped_mm+compile | ok |" in md


def test_a_loss_above_the_bound_fails_the_check(tmp_path):
    rc, summary, _ = _check(tmp_path, FakeDevice(final_loss=gc.LOSS_BOUND + 0.01))
    assert rc == 1 and summary["parts"]["train"]["status"] == "failed"
    assert "not below the bound" in summary["parts"]["train"]["detail"]
    assert summary["parts"]["throughput"]["status"] == "passed"  # the other parts still ran


def test_a_failed_required_case_fails_the_check_an_optional_one_is_only_reported(tmp_path):
    rc, summary, _ = _check(tmp_path, FakeDevice(failing={"dense_125m/transformers/sdpa+compile"}))
    assert rc == 0 and "optional failed: dense_125m/transformers/sdpa+compile" in summary["parts"]["throughput"]["detail"]
    rc, summary, _ = _check(tmp_path / "2", FakeDevice(failing={"dense_1b/sdpa"}))
    assert rc == 1 and "required not ok: dense_1b/sdpa (failed)" in summary["parts"]["throughput"]["detail"]


def test_without_transformers_its_rows_are_skipped_and_the_check_still_passes(tmp_path):
    rc, summary, out = _check(tmp_path, FakeDevice(hf_missing=True))
    assert rc == 0, summary["parts"]
    rows = json.loads((out / "throughput.json").read_text())["results"]
    assert {r["status"] for r in rows if "transformers" in r["name"]} == {"skipped"}


def test_cases_the_budget_cannot_start_are_not_run_rows_and_fail_the_check(tmp_path):
    device = FakeDevice()
    rc, summary, out = _check(tmp_path, device, ("parts", ["throughput"]),
                              ("budget", gc.STOP_MARGIN_S + gc.CASE_MIN_S - 2))
    rows = json.loads((out / "throughput.json").read_text())["results"]
    assert rc == 1 and not device.commands and {r["status"] for r in rows} == {"not_run"}
    assert "time budget" in rows[0]["error"] and summary["parts"]["env"]["status"] == "skipped"


def test_parse_pytest_reads_counts_and_skip_reasons():
    res = gc.parse_pytest(PYTEST_OUT)
    assert res["counts"] == {"passed": 19, "skipped": 1, "deselected": 65}
    assert res["skips"] == [{"count": 1, "where": "tests/test_hardware.py:154", "reason": "needs a CUDA device"}]
    assert gc.parse_pytest("1 failed, 2 passed, 1 error in 3.00s")["counts"] == {"failed": 1, "passed": 2, "errors": 1}
    assert gc.parse_collected("a\n20/85 tests collected (65 deselected) in 2.95s\n")[0] == 20


def test_the_wheel_list_matches_the_fetch_script():
    script = (REPO / "benchmarks" / "fetch_gpu_wheels.sh").read_text()
    for prefix in gc.WHEELS:
        name, version = prefix.rstrip("-").rsplit("-", 1)
        assert re.search(rf"{name.replace('_', '[-_]')}=={re.escape(version)}", script), prefix


# ---- the offline fit grid --------------------------------------------------------------------

def _compose(experiment: str, hydra_config: bool = True):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import train  # noqa: F401  (registers the structured configs)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"+experiment={experiment}"], return_hydra_config=hydra_config)


def test_offline_fit_grid_is_fit_grid_gpus_sweep_on_the_embedded_corpus():
    from omegaconf import OmegaConf

    from lrscale.training.config import to_object
    online, offline = _compose("fit_grid_gpu"), _compose("fit_grid_gpu_offline")
    assert OmegaConf.to_container(offline.hydra.sweeper.params) == OmegaConf.to_container(online.hydra.sweeper.params)
    assert offline.hydra.launcher._target_ == online.hydra.launcher._target_
    cfg = to_object(_compose("fit_grid_gpu_offline", hydra_config=False))  # every group's validation
    d, t, s = cfg.data, cfg.train, cfg.schedule
    assert d.source == "embedded" and d.hf_path is None and not d.hf_streaming and d.tokenizer.vocab_size == 4096
    assert (cfg.hardware.device, cfg.hardware.dtype, cfg.hardware.compile) == ("cuda", "bfloat16", True)
    assert cfg.sweep.enabled and cfg.sweep.dir == "sweeps/fit_grid_gpu_offline"
    step_tokens = t.batch_size * cfg.model.seq_len
    assert all(b % step_tokens == 0 and b < t.steps * step_tokens for b in s.decay_branches)
    # the validation set fits the smallest embedded split seen (a stdlib without test/: 366,834 tokens)
    assert t.eval_batches * t.batch_size * (cfg.model.seq_len + 1) <= 366_834
    assert "PLUMBING-GRADE" in (REPO / "configs" / "experiment" / "fit_grid_gpu_offline.yaml").read_text()
