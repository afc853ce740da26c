"""Nothing lost, nothing silently wrong: each fault injected, and what must hold after it.

Damaged checkpoints (bytes flipped, a shard truncated) are detected and never trained
from; inside a sweep the job is redone and the sweep goes on to its fit. A second
process on a run directory is refused. `+key` typos are refused. SIGTERM/SIGINT stop
after the step with a checkpoint, and the rerun ends with the losses of an uninterrupted
run. A failed checkpoint write leaves the previous checkpoint loadable. Bad values and
bad corpus files get messages that name the field or path and the fix.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_cfg, tiny_overrides

import train
from lrscale.training.rundir import identify
from lrscale.data import DataConfig, TokenizerConfig, build_corpus
from lrscale.models import ModelConfig, MoEConfig
from lrscale.optim import OptimConfig
from lrscale.optim.groups import validate_optim
from lrscale.training import checkpoint, errors, interrupt, loop
from lrscale.training.checkpoint import CheckpointWriteError, CorruptCheckpointError, find_checkpoint
from lrscale.training.config import TrainConfig, to_object
from lrscale.training.distributed import World
from lrscale.training.interrupt import Interrupted
from lrscale.training.io import read_jsonl
from lrscale.training.runlock import RunLock, RunLockedError
from lrscale.training.sweep_job import run_sweep_job

REPO = Path(__file__).resolve().parents[1]


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice in {run_dir}"
    return {r["step"]: r["train_loss"] for r in rows}


def assert_same_run(got: dict, ref: dict, run_dir: Path, ref_dir: Path) -> None:
    assert got["status"] == ref["status"] == "completed"
    assert got["final_val_loss"] == pytest.approx(ref["final_val_loss"], rel=1e-6)
    a, b = train_losses(run_dir), train_losses(ref_dir)
    assert sorted(a) == sorted(b)
    for step, loss in b.items():
        assert a[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step


def stop_at(monkeypatch, step: int, how):
    """Make train_step call how() when it reaches `step` (a kill, a signal, ...), in the main
    loop and in decay branches alike."""
    real = train.train_step

    def step_fn(ctx, x, y, s):
        if s == step:
            how()
        return real(ctx, x, y, s)

    monkeypatch.setattr(train, "train_step", step_fn)
    monkeypatch.setattr(loop, "train_step", step_fn)


def killed(*_):
    raise KeyboardInterrupt("simulated kill -9")


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":  # same size: only the digest can tell
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


def interrupted_run(cfg, monkeypatch, at: int = 7) -> Path:
    """A run killed at step `at`, leaving the checkpoint of step 4 (tiny: ckpt_every=4). Undoes
    the test's monkeypatches so far."""
    stop_at(monkeypatch, at, killed)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg)
    monkeypatch.undo()
    run_dir = identify(cfg).dir
    assert (run_dir / "checkpoint" / checkpoint.MANIFEST).exists()
    return run_dir


def wait_for_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while len([r for r in read_jsonl(path) if "train_loss" in r]) < n:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before logging {n} steps: {proc.stderr.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"no {n} steps logged in {timeout} s")
        time.sleep(0.05)


# ---- damaged checkpoints -------------------------------------------------------------------

@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_shard_is_detected_and_never_trained_from(tiny, monkeypatch, how):
    cfg = tiny()
    run_dir = interrupted_run(cfg, monkeypatch)
    shard = run_dir / "checkpoint" / "__0_0.distcp"
    damage(shard, how)
    stop_at(monkeypatch, 4, lambda: pytest.fail("trained from a damaged checkpoint"))
    with pytest.raises(CorruptCheckpointError) as e:
        train.run(cfg)
    msg = str(e.value)
    assert str(shard) in msg and "delete it or move it aside" in msg
    assert shard.exists() and not (run_dir / "summary.json").exists()  # a single run deletes nothing


def test_a_base_exception_from_checkpoint_loading_is_a_clear_error(tiny, monkeypatch):
    """DCP's CheckpointException derives from BaseException; `except Exception` missed it."""
    from torch.distributed.checkpoint.api import CheckpointException

    cfg = tiny()
    run_dir = interrupted_run(cfg, monkeypatch)

    def unreadable(state, checkpoint_id, **kw):
        raise CheckpointException("load failed", {0: (RuntimeError("invalid header in shard"), None)})

    monkeypatch.setattr(checkpoint.dcp, "load", unreadable)
    with pytest.raises(CorruptCheckpointError) as e:
        train.run(cfg)
    assert "RuntimeError: invalid header in shard" in str(e.value) and str(run_dir / "checkpoint") in str(e.value)


def test_checkpoint_without_its_manifest_is_refused_but_a_legacy_one_loads(tiny, monkeypatch, capsys):
    cfg = tiny()
    run_dir = interrupted_run(cfg, monkeypatch)
    ckpt = run_dir / "checkpoint"
    (ckpt / checkpoint.MANIFEST).unlink()
    with pytest.raises(CorruptCheckpointError, match="manifest.json is missing"):
        checkpoint.verify_checkpoint(ckpt)
    meta = checkpoint.torch.load(ckpt / checkpoint.META, weights_only=False)
    del meta["format"]  # as written before manifests existed
    checkpoint.save_torch(ckpt / checkpoint.META, meta)
    checkpoint.verify_checkpoint(ckpt)
    assert "without verifying" in capsys.readouterr().err


def test_truncated_shard_is_reported_in_one_line_naming_the_file(tiny, monkeypatch):
    """What train.py's entry point prints (its wiring: the refused second process below)."""
    cfg = tiny()
    run_dir = interrupted_run(cfg, monkeypatch)
    damage(run_dir / "checkpoint" / "__0_0.distcp", "truncate")
    lines = []
    with pytest.raises(SystemExit) as e, errors.one_line_errors(lines.append):
        train.run(cfg)
    assert e.value.code == 1 and len(lines) == 1 and "\n" not in lines[0]
    assert "__0_0.distcp" in lines[0] and "truncated" in lines[0] and f"mv {run_dir / 'checkpoint'}" in lines[0]


def test_sweep_job_moves_a_bad_checkpoint_aside_and_redoes_the_run(tiny, tmp_path, monkeypatch):
    sweep = [f"sweep.dir={tmp_path / 'sweep'}", "sweep.enabled=true"]
    ref = train.run(tiny(f"run.root={tmp_path / 'ref'}"))
    cfg = tiny(*sweep)
    run_dir = interrupted_run(cfg, monkeypatch)
    damage(run_dir / "checkpoint" / "__0_0.distcp", "flip")
    summary = run_sweep_job(train.run, cfg)
    aside = list(run_dir.glob("checkpoint.corrupt-*"))
    assert len(aside) == 1 and (aside[0] / "__0_0.distcp").exists()  # kept, not deleted
    assert_same_run(summary, ref, run_dir, Path(ref["run_dir"]))  # redone from scratch
    rows = read_jsonl(tmp_path / "sweep" / "results.jsonl")
    assert [r["status"] for r in rows] == ["ok"]


def test_truncated_shard_inside_a_sweep_is_redone_and_the_fit_is_made(tmp_path, data_cache, monkeypatch):
    """The whole command: one job's checkpoint is truncated; the sweep finishes all jobs,
    redoes that one, records each run's rows once and fits."""
    sweep_dir = tmp_path / "sweep"
    common = ["+experiment=fit_grid", "model=fit_xs", "model.d_model=32", "model.seq_len=32",
              "model.moe.num_experts=4", "train.batch_size=4", "train.steps=8", "train.eval_every=1000",
              "train.eval_batches=2", "train.ckpt_every=4", "schedule.warmup_steps=2", "schedule.decay_branches=[512]",
              "data.max_bytes=400000", "data.val_fraction=0.3", "data.tokenizer.vocab_size=384",
              f"data.cache_dir={data_cache}", f"sweep.dir={sweep_dir}", "logging.progress=false", "logging.log_every=1"]
    bad = interrupted_run(compose_cfg([*common, "optim.lr=2e-3"]), monkeypatch)  # the job of lr 2e-3
    damage(bad / "checkpoint" / "__0_0.distcp", "truncate")
    env = {k: v for k, v in os.environ.items() if k != "LRSCALE_CACHE"}
    p = subprocess.run([sys.executable, "train.py", *common, "hydra/launcher=basic", "optim.lr=1e-3,2e-3,4e-3",
                        "hydra.callbacks.sweep.n_boot=20"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[sweep] job 3/3 done: completed" in p.stderr and "moved" in p.stderr
    assert len(list(bad.glob("checkpoint.corrupt-*"))) == 1
    assert sorted(train_losses(bad)) == list(range(1, 9))  # redone from step 1, nothing logged twice
    rows = read_jsonl(sweep_dir / "results.jsonl")
    keys = [(r["run_id"], r["branch"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3 * 2 and {r["status"] for r in rows} == {"ok"}
    assert (sweep_dir / "fit.json").exists() and (sweep_dir / "report.md").exists()


# ---- a failed checkpoint write ----------------------------------------------------------

def test_full_disk_during_a_checkpoint_leaves_the_previous_one_loadable(tiny, tmp_path, monkeypatch):
    from torch.distributed.checkpoint.api import CheckpointException

    overrides = ("train.steps=12", "train.ckpt_every=4", "logging.log_every=1")
    ref = train.run(tiny(*overrides, f"run.root={tmp_path / 'ref'}"))
    cfg = tiny(*overrides)
    run_dir = identify(cfg).dir
    real_save, calls = checkpoint.dcp.save, []

    def disk_full_on_second_save(state, checkpoint_id, **kw):
        calls.append(checkpoint_id)
        if len(calls) == 2:  # step 8: DCP wraps the rank's OSError in a BaseException
            Path(checkpoint_id).mkdir()
            (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"partial")
            err = OSError(errno.ENOSPC, "No space left on device")
            raise CheckpointException("save failed", {0: (err, None)})
        return real_save(state, checkpoint_id=checkpoint_id, **kw)

    monkeypatch.setattr(checkpoint.dcp, "save", disk_full_on_second_save)
    with pytest.raises(CheckpointWriteError) as e:
        train.run(cfg)
    msg = str(e.value)
    assert "no space left" in msg and "checkpoint.tmp" in msg and "previous checkpoint" in msg and "\n" not in msg
    assert not (run_dir / "checkpoint.tmp").exists()
    monkeypatch.undo()
    checkpoint.verify_checkpoint(find_checkpoint(run_dir))
    resumed = train.run(cfg)  # from step 4
    assert_same_run(resumed, ref, run_dir, Path(ref["run_dir"]))


def test_ctrl_c_inside_a_checkpoint_write_stays_a_ctrl_c(tiny, tmp_path, monkeypatch):
    """DCP wraps a second Ctrl-C in its CheckpointException: still a stop, not a failed write
    nor a `failed` sweep row."""
    from torch.distributed.checkpoint.api import CheckpointException

    def ctrl_c(state, checkpoint_id, **kw):
        raise CheckpointException("save failed", {0: (KeyboardInterrupt(), None)})

    monkeypatch.setattr(checkpoint.dcp, "save", ctrl_c)
    cfg = tiny("sweep.enabled=true", f"sweep.dir={tmp_path / 'sweep'}")
    with pytest.raises(KeyboardInterrupt):
        run_sweep_job(train.run, cfg)
    assert not (tmp_path / "sweep" / "results.jsonl").exists()
    assert find_checkpoint(identify(cfg).dir) is None


@pytest.mark.parametrize("exc, free, needle", [
    (OSError(errno.ENOSPC, "No space left on device"), 10 << 30, "no space left"),
    (OSError(errno.EROFS, "Read-only file system"), 10 << 30, "read-only or not writable"),
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 704 vs 598"), 0, "no space left"),
    (RuntimeError("something else"), 10 << 30, "RuntimeError: something else"),
])
def test_write_failures_are_described_in_one_line_with_the_fix(exc, free, needle, monkeypatch, tmp_path):
    monkeypatch.setattr(errors, "free_bytes", lambda path: free)
    msg = errors.write_failure(tmp_path / "x", exc)
    assert needle in msg and str(tmp_path / "x") in msg and "\n" not in msg


def test_entry_point_reports_a_disk_error_in_one_line(capsys, tmp_path):
    lines = []
    with pytest.raises(SystemExit) as e, errors.one_line_errors(lines.append):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "metrics.jsonl"))
    assert e.value.code == 1 and len(lines) == 1
    assert "metrics.jsonl" in lines[0] and "run.root" in lines[0]


# ---- one writer per run directory ------------------------------------------------------------

def test_second_lock_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError) as e:
            RunLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in str(e.value) and socket.gethostname() in str(e.value)
    with RunLock(tmp_path):  # released: free again
        pass


def test_lock_of_a_killed_process_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lrscale.training.runlock import RunLock; "
                               "lock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire()
    holder.kill()  # SIGKILL: no chance to release
    holder.wait()
    with RunLock(tmp_path):
        assert f"pid {holder.pid}" in capsys.readouterr().err  # says whose lock it took over


def test_two_identical_commands_one_is_refused_and_no_row_is_doubled(tmp_path, data_cache):
    """Both started at once: whichever takes the run directory first trains, the other exits
    1 with one line naming it."""
    args = [*tiny_overrides(tmp_path, data_cache), "train.steps=5000", "train.eval_every=5000", "train.ckpt_every=0",
            "logging.log_every=1"]
    run_dir = identify(compose_cfg(args)).dir
    procs = [subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        deadline = time.time() + 120
        while all(p.poll() is None for p in procs):
            assert time.time() < deadline, "neither command was refused"
            time.sleep(0.05)
        refused, winner = sorted(procs, key=lambda p: p.poll() is None)
        err = refused.stderr.read()
        assert refused.returncode == 1, err[-2000:]
        assert "Traceback" not in err  # one line, from train.py's entry point
        error = [line for line in err.splitlines() if "error:" in line]
        assert len(error) == 1 and f"pid {winner.pid} on host {socket.gethostname()}" in error[0]
        wait_for_rows(run_dir / "metrics.jsonl", 2, winner)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            p.communicate(timeout=120)
    assert winner.returncode == 143
    steps = sorted(train_losses(run_dir))  # fails on a doubled step
    assert steps == list(range(1, steps[-1] + 1))


# ---- strict overrides ----------------------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("+train.stepz=5", "train.stepz (did you mean train.steps?)"),
    ("+model.d_modle=64", "model.d_modle (did you mean model.d_model?)"),
    ("+model.moe.topk=1", "model.moe.topk (did you mean model.moe.top_k?)"),
    ("+banana=1", "banana (valid: model,"),
])
def test_plus_override_outside_the_schema_is_refused(tiny, override, needle):
    with pytest.raises(ValueError) as e:
        to_object(tiny(override))
    assert needle in str(e.value) and "drop the '+'" in str(e.value)


def test_sweep_with_a_plus_typo_is_refused_before_any_job(tmp_path):
    from hydra_plugins.lrscale.callbacks import SweepCallback
    cfg = compose_cfg(["+experiment=fit_grid", f"sweep.dir={tmp_path}", "+optim.learning_rate=1"])
    with pytest.raises(ValueError, match="optim.learning_rate"):
        SweepCallback().on_multirun_start(cfg)
    assert not (tmp_path / "sweep_plan.json").exists()


# ---- interruption ------------------------------------------------------------------------

def test_sigterm_checkpoints_at_the_step_and_the_rerun_matches_an_uninterrupted_run(tmp_path, data_cache):
    args = [*tiny_overrides(tmp_path, data_cache), "train.steps=150", "train.eval_every=1000",
            "train.ckpt_every=1000", "logging.log_every=1"]  # no periodic checkpoint: only the signal's
    cfg = compose_cfg(args)
    run_dir = identify(cfg).dir
    p = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    wait_for_rows(run_dir / "metrics.jsonl", 3, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
    stopped = summary["steps"]
    assert 3 <= stopped < 150 and max(train_losses(run_dir)) == stopped
    assert f"Rerun the same command to resume from step {stopped}" in err
    ckpt = find_checkpoint(run_dir)
    checkpoint.verify_checkpoint(ckpt)
    assert checkpoint.torch.load(ckpt / checkpoint.META, weights_only=False)["state"]["step"] == stopped

    resumed = train.run(cfg)
    ref = train.run(compose_cfg([*args, f"run.root={tmp_path / 'ref'}"]))
    assert_same_run(resumed, ref, run_dir, Path(ref["run_dir"]))


def test_ctrl_c_inside_a_decay_branch_abandons_it_and_the_rerun_redoes_it(tiny, tmp_path, monkeypatch):
    # 12 steps; the branch to 10 steps (1280 tokens) decays over 2 steps, forking at step 8.
    overrides = ("train.steps=12", "train.ckpt_every=0", "schedule.decay_branches=[1280]", "logging.log_every=1")
    ref = train.run(tiny(*overrides, f"run.root={tmp_path / 'ref'}"))
    cfg = tiny(*overrides, "sweep.enabled=true", f"sweep.dir={tmp_path / 'sweep'}")
    stop_at(monkeypatch, 8, lambda: os.kill(os.getpid(), signal.SIGINT))  # the branch's first step
    with pytest.raises(Interrupted) as e:
        train.run(cfg)
    assert e.value.code == 130
    monkeypatch.undo()
    run_dir = identify(cfg).dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 8 and summary["branches"] == []
    assert not (tmp_path / "sweep" / "results.jsonl").exists()  # an interrupted run is no measurement
    resumed = train.run(cfg)
    assert_same_run(resumed, ref, run_dir, Path(ref["run_dir"]))
    assert resumed["branches"][0]["val_loss"] == pytest.approx(ref["branches"][0]["val_loss"], rel=1e-6)
    assert len(read_jsonl(tmp_path / "sweep" / "results.jsonl")) == 2


def test_a_launchers_handler_still_runs_after_the_checkpoint():
    """submitit requeues from its own SIGUSR2 handler: ours only sets the flag, and hands the
    signal on once the run has stopped cleanly."""
    seen = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with interrupt.graceful_stop() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested(World()) and seen == []
        assert signal.getsignal(signal.SIGUSR2) is not stop._handle  # restored
        with pytest.raises(Interrupted) as e:
            stop.exit()
        assert seen == [signal.SIGUSR2] and e.value.code == 128 + signal.SIGUSR2
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_second_ctrl_c_stops_at_once_and_says_how_to_resume():
    lines = []
    with pytest.raises(SystemExit) as e, errors.one_line_errors(lines.append):
        raise KeyboardInterrupt
    assert e.value.code == 130 and "rerun the same command to resume" in lines[0]


# ---- messages that name the field and the fix -----------------------------------------------

@pytest.mark.parametrize("build, needles", [
    (lambda: ModelConfig(n_kv_heads=-1), ["model.n_kv_heads=-1", ">= 0", "0 = n_heads"]),
    (lambda: ModelConfig(moe=MoEConfig(num_experts=4, d_expert=-8)), ["model.moe.d_expert=-8", ">= 0"]),
    (lambda: validate_optim(OptimConfig(lr=-1e-3)), ["optim.lr=-0.001", "must be positive", "optim.lr=3e-3"]),
    (lambda: validate_optim(OptimConfig(betas=[0.9])), ["optim.betas=[0.9]", "two numbers"]),
    (lambda: TrainConfig(steps=0), ["train.steps=0", ">= 1", "set train.steps"]),
    (lambda: TrainConfig(eval_every=0), ["train.eval_every=0", ">= 1"]),
])
def test_bad_values_name_the_field_the_value_and_the_fix(build, needles):
    with pytest.raises(ValueError) as e:
        build()
    for needle in needles:
        assert needle in str(e.value)


def test_zero_steps_is_blamed_on_train_steps_not_the_warmup(tiny):
    with pytest.raises(ValueError, match=r"train\.steps=0"):
        to_object(tiny("train.steps=0"))


def write_sparse_gpt2_files(tmp_path: Path) -> dict:
    """256 byte symbols, then two merges whose ids are sparse: one far above 65535."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({"Ġt": 70000, "he": 300})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\n")
    return vocab


def corpus_files(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(3):
        (d / f"doc{i}.txt").write_text("".join(f"line {j}: the cat and the dog {j * 7} {i}\n" for j in range(300)))
    return d


def test_sparse_token_ids_above_65535_get_a_wide_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("LRSCALE_CACHE", raising=False)
    write_sparse_gpt2_files(tmp_path)
    tok = TokenizerConfig(kind="files", vocab_size=70001, vocab_file=str(tmp_path / "vocab.json"),
                          merges_file=str(tmp_path / "merges.txt"))
    cfg = DataConfig(source="text_files", paths=[str(corpus_files(tmp_path) / "*.txt")], val_fraction=0.3,
                     cache_dir=str(tmp_path / "cache"), tokenizer=tok)
    c = build_corpus(cfg)
    assert c.train.dtype == np.uint32 and int(c.train.max()) == 70000 and c.vocab_size == 70001
    assert c.decode(c.encode(" the cat")) == " the cat"
    with pytest.raises(ValueError, match=r"data.tokenizer.vocab_size >= 70001"):
        build_corpus(replace(cfg, cache_dir=str(tmp_path / "cache2"), tokenizer=replace(tok, vocab_size=65536)))


@pytest.mark.parametrize("content, why", [
    (bytes(range(256)) * 40, "NUL bytes"),
    (bytes(range(128, 256)) * 80, "is not UTF-8"),
])
def test_binary_corpus_file_is_refused_by_name(tmp_path, monkeypatch, content, why):
    monkeypatch.delenv("LRSCALE_CACHE", raising=False)
    d = corpus_files(tmp_path)
    (d / "model.bin").write_bytes(content)
    cfg = DataConfig(source="text_files", paths=[str(d / "*")], val_fraction=0.3, cache_dir=str(tmp_path / "cache"),
                     tokenizer=TokenizerConfig(vocab_size=300))
    with pytest.raises(ValueError) as e:
        build_corpus(cfg)
    assert str(d / "model.bin") in str(e.value) and why in str(e.value) and "data.paths" in str(e.value)
    assert not list((tmp_path / "cache").glob("*/meta.json"))  # nothing half-built is left
