"""Data parallelism on CPU: two gloo ranks, started the way torchrun starts them, must train
exactly like one process with the same global batch (DDP and FSDP2), write one run
directory and one results row, and leave checkpoints that resume on another world size.

The model is a tiny MoE with DeepSeek-V3 bias balancing at a large bias step, so that a
rank that balanced on its own half of the batch would route differently and show up in
the losses. The one-process reference is one module-scoped run in this process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_model_and_param
import torch.multiprocessing as mp

from lrscale.data import TokenLoader
from lrscale.models import ModelConfig, MoEConfig, Transformer
from lrscale.optim import GroupLR, OptimConfig, build_optimizer
from lrscale.parametrization import ParametrizationConfig, build_parametrization, init_weights, param_table
from lrscale.training import checkpoint, distributed
from lrscale.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from lrscale.training.config import HardwareConfig
from lrscale.training.distributed import World
from lrscale.training.io import read_jsonl
from lrscale.training.loop import StepContext, TrainState, train_step

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def overrides(root: Path, cache: Path, name: str, *extra: str) -> list[str]:
    """Tiny MoE, constant LR (so a 3-step run is a prefix of the 6-step one), eval and
    checkpoint every 3 steps; the data settings are conftest's, so the cache is shared."""
    return [
        "model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.seq_len=32", "model.moe.num_experts=4",
        "model.moe.balance=aux_free", "model.moe.bias_update_rate=0.05",
        f"train.steps={STEPS}", "train.batch_size=4", "train.eval_every=3", "train.eval_batches=2",
        "train.ckpt_every=3", "schedule=constant", "schedule.warmup_steps=1",
        "data.max_bytes=400000", "data.val_fraction=0.25", "data.tokenizer.vocab_size=384", f"data.cache_dir={cache}",
        f"run.root={root}", f"run.name={name}", "logging.progress=false", "logging.print_param_table=false",
        "logging.log_every=1", "hardware.num_threads=1", *extra,
    ]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-6000:]
    return p


def losses(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(train loss, val loss) by step; a step logged twice (by two ranks) fails."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    tr = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    assert len(dict(tr)) == len(tr) and len(dict(va)) == len(va), f"a step was logged twice in {run_dir}"
    return dict(tr), dict(va)


def assert_same_losses(got: tuple[dict, dict], ref: tuple[dict, dict], steps) -> None:
    for kind, g, r in (("train", got[0], ref[0]), ("val", got[1], ref[1])):
        want = {s: r[s] for s in r if s in steps}
        assert set(g) == set(want), (kind, sorted(g), sorted(want))
        for s, loss in want.items():
            assert g[s] == pytest.approx(loss, rel=1e-5, abs=1e-6), (kind, s)


def run_here(args: list[str]) -> dict:
    """train.run in this process (one rank). Imported here, not at the top: the spawned
    ranks of the FSDP2 test import this module, and Hydra and train.py are slow to load."""
    import train
    from conftest import compose_cfg
    return train.run(compose_cfg(args))


def resumable_copy(run_dir: Path, dst: Path) -> Path:
    """A copy of a finished run that looks killed right after its last checkpoint."""
    shutil.copytree(run_dir, dst)
    (dst / "summary.json").unlink()
    return dst


@pytest.fixture(scope="module")
def ref(tmp_path_factory, data_cache):
    """The one-process run (whole global batch, no accumulation); also builds the token
    cache before any ranks start."""
    root = tmp_path_factory.mktemp("ref")
    summary = run_here(overrides(root, data_cache, "ref"))
    run_dir = Path(summary["run_dir"])
    return losses(run_dir), sorted(f.name for f in run_dir.iterdir())


@pytest.fixture(scope="module")
def fsdp_3_steps(tmp_path_factory, data_cache, ref):
    """A 2-rank FSDP2 run of the first 3 steps: its checkpoint holds two ranks' shards."""
    root = tmp_path_factory.mktemp("fsdp")
    torchrun(overrides(root, data_cache, "fsdp", "train.steps=3", "hardware.data_parallel=fsdp"))
    return root / "fsdp"


def test_ddp_with_accumulation_matches_one_process_and_writes_once(ref, tmp_path, data_cache):
    root, sweep = tmp_path / "runs", tmp_path / "sweep"
    p = torchrun(overrides(root, data_cache, "ddp", "hardware.data_parallel=ddp", "train.micro_batch_size=1",
                           "sweep.enabled=true", f"sweep.dir={sweep}"))
    ref_losses, ref_files = ref
    assert [d.name for d in root.iterdir()] == ["ddp"]
    assert sorted(f.name for f in (root / "ddp").iterdir()) == ref_files  # nothing per rank
    assert len(read_jsonl(sweep / "results.jsonl")) == 1
    assert p.stderr.count("[train] completed") == 1  # console from rank 0 only
    assert_same_losses(losses(root / "ddp"), ref_losses, range(1, STEPS + 1))


def test_fsdp_matches_one_process(ref, fsdp_3_steps):
    assert_same_losses(losses(fsdp_3_steps), ref[0], range(1, 4))
    shards = sorted(f.name for f in (fsdp_3_steps / "checkpoint").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]


def test_2_rank_checkpoint_resumes_on_1_rank(ref, fsdp_3_steps, tmp_path, data_cache, capsys):
    run_dir = resumable_copy(fsdp_3_steps, tmp_path / "fsdp")
    run_here(overrides(tmp_path, data_cache, "fsdp"))
    assert "at step 3" in capsys.readouterr().err
    assert_same_losses(losses(run_dir), ref[0], range(1, STEPS + 1))


def test_2_rank_checkpoint_resumes_on_2_ranks_with_ddp(ref, fsdp_3_steps, tmp_path, data_cache):
    run_dir = resumable_copy(fsdp_3_steps, tmp_path / "fsdp")
    p = torchrun(overrides(tmp_path, data_cache, "fsdp", "hardware.data_parallel=ddp"))
    assert "resumed" in p.stderr
    assert_same_losses(losses(run_dir), ref[0], range(1, STEPS + 1))


@pytest.mark.slow
def test_1_rank_checkpoint_resumes_on_2_ranks_with_fsdp(ref, tmp_path, data_cache):
    run_here(overrides(tmp_path, data_cache, "one", "train.steps=3"))
    run_dir = resumable_copy(tmp_path / "one", tmp_path / "resumed" / "one")
    p = torchrun(overrides(tmp_path / "resumed", data_cache, "one", "hardware.data_parallel=fsdp"))
    assert "resumed" in p.stderr
    assert_same_losses(losses(run_dir), ref[0], range(1, STEPS + 1))


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of that rank (a child of `parent` with RANK=rank)."""
    for d in Path("/proc").iterdir():
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"\0RANK={rank}\0".encode() in b"\0" + (d / "environ").read_bytes():
                return int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(ref, tmp_path, data_cache):
    """A signal that reaches one rank stops both after the same step (the per-step all-reduce),
    with one checkpoint of both ranks' shards and one `interrupted` summary. Without
    hardware.data_parallel, two ranks train as DDP."""
    from lrscale.training.checkpoint import META, verify_checkpoint

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", *overrides(tmp_path, data_cache, "stop", "train.steps=3000")],
                         cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "stop"
    try:
        deadline = time.time() + 120
        while len([r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]) < 2:
            assert p.poll() is None and time.time() < deadline, "torchrun ended or stalled before step 2"
            time.sleep(0.05)
        os.kill(_rank_pid(p.pid, 1), signal.SIGTERM)  # rank 1 only; rank 0 learns it from the all-reduce
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode != 0  # torchrun reports its workers' 143
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM", err[-3000:]
    stopped = summary["steps"]
    assert err.count("[train] interrupted by SIGTERM") == 1 and err.count("using ddp") == 1
    tr, _ = losses(run_dir)  # fails on a step logged twice
    assert sorted(tr) == list(range(1, stopped + 1))
    for s in range(1, min(stopped, STEPS) + 1):  # constant LR: the 6-step reference is a prefix
        assert tr[s] == pytest.approx(ref[0][0][s], rel=1e-5, abs=1e-6), s
    ckpt = run_dir / "checkpoint"
    verify_checkpoint(ckpt)
    assert sorted(f.name for f in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert torch.load(ckpt / META, weights_only=False)["state"]["step"] == stopped


def test_more_ranks_without_data_parallel_use_ddp(capsys):
    """Issue #11: each rank training its own copy is never meant, so `none` under torchrun is DDP
    (end to end in test_sigterm_to_one_rank_stops_every_rank_after_the_same_step)."""
    hw = HardwareConfig()
    distributed.default_to_ddp(hw, 1)
    assert hw.data_parallel == "none"
    distributed.default_to_ddp(hw, 2)
    assert hw.data_parallel == "ddp" and "using ddp" in capsys.readouterr().err
    fsdp = HardwareConfig(data_parallel="fsdp")
    distributed.default_to_ddp(fsdp, 2)
    assert fsdp.data_parallel == "fsdp"


# ---- checkpoints are written atomically ----------------------------------------------------

def test_checkpoint_survives_a_kill_at_any_point_of_a_save(tmp_path, monkeypatch):
    model, table = _tiny_model()
    opt = build_optimizer(model, table, OptimConfig(), 64, 1e4)
    loader = TokenLoader(np.arange(2000), 16, 4)
    save_checkpoint(tmp_path, model, opt, loader, TrainState(step=1), World())
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing shards")

    monkeypatch.setattr(checkpoint.dcp, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, opt, loader, TrainState(step=2), World())
    monkeypatch.undo()
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint"
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # killed between the two renames
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert load_checkpoint(find_checkpoint(tmp_path), model, opt, loader).step == 1
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n]), n
    save_checkpoint(tmp_path, model, opt, loader, TrainState(step=3), World())  # cleans up the leftovers
    assert sorted(d.name for d in tmp_path.iterdir()) == ["checkpoint"]


# ---- FSDP2 keeps the parametrization's optimizer groups -----------------------------------

def _tiny_model() -> tuple[Transformer, list[dict]]:
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16,
                      moe=MoEConfig(num_experts=4, top_k=2, balance="aux_free", bias_update_rate=0.05))
    # muP lr_mult: 1 (embedding, norms, router, unembedding), 1/2 (fan-in d_model 16 -> 32) and 2/3 (the
    # expert down-projection: fan-in d_ff, 8/3 d rounded up to 32: 64 -> 96)
    model, param = build_model_and_param(cfg, "mup", base_d_model=16, attn="sdpa", experts="grouped_mm")
    return model, param_table(model, param)


def _one_step(model: torch.nn.Module, table: list[dict], rank: int, world: int) -> torch.optim.Optimizer:
    """One train_step with clipping active on this rank's rows of a fixed batch of 4."""
    opt = build_optimizer(model, table, OptimConfig(lr=1e-2, weight_decay=0.1, grad_clip=0.05), 64, 1e4)
    ctx = StepContext(model, model, opt, GroupLR(opt, lambda step: 1.0), nullcontext(), torch.device("cpu"), 0, 0.05)
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    y = x.roll(-1, dims=1)
    rows = slice(rank * 4 // world, (rank + 1) * 4 // world)
    train_step(ctx, x[rows], y[rows], 0)
    return opt


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    hw = HardwareConfig(data_parallel="fsdp")
    world = distributed.init(hw)
    model, table = _tiny_model()
    distributed.wrap(model, hw, world)
    opt = _one_step(model, table, rank, 2)
    from torch.distributed.tensor import DTensor
    params, mult = dict(model.named_parameters()), {r["name"]: r["lr_mult"] for r in table}
    for g in opt.param_groups:  # the groups hold the sharded parameters of their names
        assert [id(p) for p in g["params"]] == [id(params[n]) for n in g["names"]]
        assert all(isinstance(p, DTensor) for p in g["params"])
        assert {mult[n] for n in g["names"]} == {g["lr_mult"]} and g["initial_lr"] == 1e-2 * g["lr_mult"]
    full = {n: p.full_tensor() for n, p in params.items()}  # collective: every rank
    if rank == 0:
        torch.save({"params": full, "groups": [(g["lr_mult"], g["names"]) for g in opt.param_groups]}, out)
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_optimizer_keeps_group_multipliers_and_steps_like_one_process(tmp_path):
    out = tmp_path / "fsdp.pt"
    mp.spawn(_fsdp_worker, args=(_free_port(), str(out)), nprocs=2)
    model, table = _tiny_model()
    opt = _one_step(model, table, 0, 1)
    got = torch.load(out)
    assert got["groups"] == [(g["lr_mult"], g["names"]) for g in opt.param_groups]
    assert {lr for lr, _ in got["groups"]} == {0.5, 2 / 3, 1.0}
    # Adam's first step is lr * g / (|g| + eps): entries whose |g| is near eps (1e-8 x the muP multiplier) turn
    # the 1e-7 relative rounding of a different reduction order into ~1e-6 of the weight, so
    # the bound is 1e-3 of the largest step (lr = 1e-2), not the weights' own rounding.
    for name, p in model.named_parameters():
        torch.testing.assert_close(got["params"][name], p.detach(), rtol=1e-5, atol=1e-5, msg=name)
