"""The comparison experiment as a Hydra sweeper: Fitting vs Transfer at held-out targets.

    python train.py +experiment=compare          # MoE (configs/experiment/compare.yaml)
    python train.py +experiment=compare_dense    # the dense twin

A fixed grid cannot run this experiment: where the target's LR sweep should be, and the LR of
each paradigm's verdict runs, depend on what the small runs found. So the sweeper launches
stages through whatever launcher is configured (local processes, Slurm), reading the results
in between (`lrscale.analysis.compare`):

    1. the Fitting arm's SP grid and the μP proxy sweep
    2. predictions -> predictions.json; at each target a direct LR sweep under SP and under μP
       (lattice LRs bracketing the predictions) and each paradigm's runs at its predicted LR
    3. up to `max_extensions` rounds: LRs beyond a direct sweep's edge when its best loss is there
    4. a second seed at the LRs nearest each direct sweep's optimum
    5. comparison.json, report.md, fig4_<target>.png (and the Fitting arm's own fit report)

Every job is an ordinary, idempotent train.py run recorded in its arm's results.jsonl, and
every stage is a pure function of the tables before it, so re-running the command skips what
finished, resumes what was interrupted and ends with the same report.

Hydra loads sweepers only from the `hydra_plugins` package; this module imports nothing heavy
at import time (Hydra imports every plugin module whenever any Hydra app starts).
"""
# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is
# in sys.modules, and dataclasses cannot resolve string annotations then.
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class GridConf:
    """A set of runs: every model x every LR, one WSD run each, measured at every token budget
    (the largest is the run's length, the others are decay branches forked from it)."""
    models: List[str] = field(default_factory=list)     # model presets, configs/model/<name>.yaml
    lrs: List[float] = field(default_factory=list)      # peak (base) LRs; on the lattice below
    tokens: List[int] = field(default_factory=list)     # token budgets D


@dataclass
class TargetConf:
    name: str = MISSING                                 # names its folder under targets/
    model: str = MISSING                                # a model preset larger than every fitted one
    tokens: int = MISSING                               # D at the target


@dataclass
class CompareSweeperConf:
    _target_: str = "hydra_plugins.lrscale.compare_sweeper.CompareSweeper"
    dir: str = "sweeps/compare"                         # root of the comparison (one subfolder per arm)
    family: str = "MoE"                                 # for titles: MoE | dense
    fitting: GridConf = field(default_factory=GridConf)  # the Fitting arm (under `sp`)
    proxy: GridConf = field(default_factory=GridConf)    # the μP proxy: one model, the base shape
    targets: List[TargetConf] = field(default_factory=list)
    sp: str = "sp"                                      # parametrization of the Fitting arm and the SP panel
    mup: str = "completep"                              # of the proxy and the μP panel (depth rules included)
    target_lrs: int = 7                                 # LRs per direct sweep before extensions (>= 6)
    max_extensions: int = 2                             # rounds of LRs added beyond an edge optimum
    seeds: List[int] = field(default_factory=lambda: [0, 1])  # verdict seeds; seeds[1:] also at the optimum
    replicate_lrs: int = 2                              # LRs nearest each direct optimum that get seeds[1:]
    lr_base: float = 1e-3                               # the LR lattice: lr_base * lr_spacing^k
    lr_spacing: float = 1.4142135623730951
    window: int = 5                                     # Eq. 2 on the LRs nearest the lowest loss; 0 = all
    horizon_beta: float = 0.3509                        # token-horizon rule of the Transfer arm (PAPER.md §3)
    n_kind: str = "n_active_nonembed"                   # how N is counted for Eq. 6
    n_boot: int = 1000                                  # Eq. 6 bootstrap resamples
    stop_after_stage: int = 0                           # 1: only the small runs (look before the targets); 0 = all


ConfigStore.instance().store(group="hydra/sweeper", name="compare", node=CompareSweeperConf, provider="lrscale")


def _check(spec: CompareSweeperConf) -> None:
    """Refuse a design that cannot answer the question, naming the field."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"hydra.sweeper.{msg}")

    f, p = spec.fitting, spec.proxy
    need(len(f.models) >= 4, f"fitting.models: the Fitting paradigm needs >= 4 model sizes, got {len(f.models)}")
    need(len(f.lrs) >= 5, f"fitting.lrs: >= 5 learning rates per size are needed, got {len(f.lrs)}")
    need(len(set(f.tokens)) >= 3, f"fitting.tokens: >= 3 token budgets are needed for Eq. 6, got {f.tokens}")
    need(len(p.models) == 1, f"proxy.models: the μP proxy is one model (the base shape), got {p.models}")
    need(len(p.lrs) >= 5, f"proxy.lrs: >= 5 learning rates are needed, got {len(p.lrs)}")
    need(len(p.tokens) >= 1, "proxy.tokens: give the proxy's horizon")
    need(len(spec.targets) >= 1, "targets: name at least one held-out target")
    need(spec.target_lrs >= 6, f"target_lrs={spec.target_lrs}: the direct sweep needs >= 6 LRs")
    need(len(spec.seeds) >= 1, "seeds: give at least one seed")
    need(spec.window == 0 or spec.window >= 3, f"window={spec.window}: Eq. 2 needs >= 3 LRs (0 = all)")
    need(spec.lr_spacing > 1 and spec.lr_base > 0, "lr_spacing must be > 1 and lr_base > 0")
    need(all(x > 0 for x in [*f.lrs, *p.lrs, *f.tokens, *p.tokens]), "LRs and token budgets must be positive")


class CompareSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        merged = OmegaConf.merge(OmegaConf.structured(CompareSweeperConf), kwargs)
        self.spec: CompareSweeperConf = OmegaConf.to_object(merged)  # type: ignore[assignment]
        _check(self.spec)
        self.root = Path(self.spec.dir)
        self.job_idx = 0
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ---- jobs ------------------------------------------------------------------------------

    def _compose(self, overrides: List[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def _job(self, arm: str, model: str, parametrization: str, lr: float, tokens: Sequence[int],
             seed: int = 0) -> List[str]:
        """One train.py run: the user's overrides, then this job's (which win)."""
        tokens_per_step = self.tokens_per_step(model)
        steps = max(tokens) // tokens_per_step
        branches = sorted(t for t in set(tokens) if t != max(tokens))
        return [*self.arguments, f"sweep.dir={self.root / arm}", f"model={model}",
                f"parametrization={parametrization}", f"optim.lr={lr:.6g}", f"train.steps={steps}",
                f"schedule.decay_branches=[{','.join(str(b) for b in branches)}]", f"train.seed={seed}"]

    def tokens_per_step(self, model: str) -> int:
        if model not in self._tps:
            cfg = self._compose([*self.arguments, f"model={model}"])
            self._tps[model] = int(cfg.train.batch_size) * int(cfg.model.seq_len)
        return self._tps[model]

    def model_counts(self, model: str) -> Dict[str, int]:
        from lrscale.models import ModelConfig

        cfg = self._compose([*self.arguments, f"model={model}"])
        node = OmegaConf.to_container(cfg.model, resolve=True)  # the vocabulary comes from data.tokenizer
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node)).param_counts()

    def launch(self, stage: str, jobs: List[List[str]]) -> None:
        """Run a batch through the configured launcher; a job that raised stops the comparison."""
        if not jobs:
            return
        assert self.launcher is not None
        self.validate_batch_is_legal(jobs[:1])  # the jobs differ only in values the schema types: one compose catches a typo
        t0 = time.time()
        print(f"[compare] {stage}: {len(jobs)} job(s) (finished ones are skipped) | elapsed "
              f"{time.time() - self.t0:.0f} s", file=sys.stderr, flush=True)
        results: Sequence[JobReturn] = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
        self.job_idx += len(jobs)
        for r in results:
            _ = r.return_value  # re-raises a job's exception (sweep jobs record crashes as rows instead)
        self.returns.append(results)
        print(f"[compare] {stage}: done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    # ---- the stages ---------------------------------------------------------------------------

    def sweep(self, arguments: List[str]) -> Any:
        from lrscale.analysis import compare as cmp
        from lrscale.training.io import write_json

        self.t0, self.returns, self._tps = time.time(), [], {}
        self.arguments = list(arguments)
        sweeps = [a for a in self.arguments if "," in a.split("=", 1)[-1] and not a.split("=", 1)[-1].startswith("[")]
        if sweeps:
            raise ValueError(f"{sweeps}: the comparison plans its own jobs; give single values "
                             "(change the grid under hydra.sweeper.*)")
        s, lattice = self.spec, cmp.Lattice(self.spec.lr_base, self.spec.lr_spacing)
        self.root.mkdir(parents=True, exist_ok=True)

        # 1. the two paradigms' small runs
        jobs = [self._job("fitting", m, s.sp, lr, s.fitting.tokens) for m in s.fitting.models for lr in s.fitting.lrs]
        jobs += [self._job("proxy", s.proxy.models[0], s.mup, lr, s.proxy.tokens) for lr in s.proxy.lrs]
        self.launch("stage 1/4, Fitting grid and μP proxy", jobs)
        if s.stop_after_stage == 1:
            print(f"[compare] stopped after stage 1 (hydra.sweeper.stop_after_stage=1); the same command without "
                  f"it goes on from here", file=sys.stderr)
            return self.returns

        # 2. predictions, then the direct sweeps and the verdict runs at every target
        design = self.design()
        preds = cmp.predict_all(self.root, design)
        write_json(self.root / "design.json", design)
        write_json(self.root / "predictions.json", {name: [p.to_json() for p in ps] for name, ps in preds.items()})

        jobs = []
        for t in s.targets:
            by = {p.paradigm: p for p in preds[t.name]}
            base = f"targets/{t.name}"
            for panel, par, centres in (("sp", s.sp, [by["fitting"].lr]),
                                        ("mup", s.mup, [by["transfer"].lr, by["transfer_nohorizon"].lr])):
                jobs += [self._job(f"{base}/{panel}", t.model, par, lr, [t.tokens])
                         for lr in lattice.around(centres, s.target_lrs)]
            for paradigm in cmp.PARADIGMS:
                p = by[paradigm]
                jobs += [self._job(f"{base}/verdict_{paradigm}", t.model, p.parametrization, p.lr, [t.tokens], seed)
                         for seed in s.seeds]
        self.launch("stage 2/4, direct sweeps and verdict runs at the targets", jobs)

        # 3. extend any direct sweep whose best loss sits at an edge of its grid
        for round_ in range(1, s.max_extensions + 1):
            jobs = self._direct_sweep_jobs(lambda df: [(lr, 0) for lr in cmp.plan_extension(df, lattice)])
            if not jobs:
                break
            self.launch(f"stage 3/4, extension round {round_} (optimum at a grid edge)", jobs)

        # 4. more seeds where the optimum is
        jobs = self._direct_sweep_jobs(lambda df: [(lr, seed) for lr in cmp.plan_replicates(df, s.replicate_lrs)
                                                   for seed in s.seeds[1:]])
        self.launch("stage 4/4, seeds at the direct optima", jobs)

        self.report(design, preds)
        return self.returns

    def _direct_sweep_jobs(self, plan) -> List[List[str]]:
        """Jobs that `plan(table) -> [(lr, seed), ...]` adds to every target's SP and muP direct sweeps."""
        from lrscale.analysis import compare as cmp

        jobs = []
        for t in self.spec.targets:
            for panel, par in (("sp", self.spec.sp), ("mup", self.spec.mup)):
                arm = f"targets/{t.name}/{panel}"
                df = cmp.load_arm(self.root / arm)
                if df is not None:
                    jobs += [self._job(arm, t.model, par, lr, [t.tokens], seed) for lr, seed in plan(df)]
        return jobs

    def design(self) -> Dict[str, Any]:
        """What the analysis needs to know about this comparison (design.json)."""
        s = self.spec
        targets = []
        for t in s.targets:
            counts = self.model_counts(t.model)
            targets.append({"name": t.name, "model": t.model, "N": float(counts[s.n_kind]), "D": float(t.tokens),
                             "counts": counts})
        return {"family": s.family, "n_kind": s.n_kind, "window": s.window, "n_boot": s.n_boot,
                "horizon_beta": s.horizon_beta, "sp": s.sp, "mup": s.mup, "seeds": list(s.seeds),
                "lattice": {"base": s.lr_base, "spacing": s.lr_spacing}, "targets": targets}

    # ---- the report ------------------------------------------------------------------------

    def report(self, design: Dict[str, Any], preds: Dict[str, list]) -> None:
        from lrscale.analysis import compare as cmp
        from hydra_plugins.lrscale.callbacks import fit_sweep_dir, hardware_line

        assert self.config is not None
        hardware = hardware_line(self.root / "fitting", self.config.hardware)
        fit_sweep_dir(self.root / "fitting", hardware, n_boot=self.spec.n_boot,  # the arm's own fit report
                      window=self.spec.window or None)
        comparison = cmp.build_comparison(self.root, design, preds, hardware=hardware)
        paths = cmp.write_comparison(self.root, comparison, preds)
        print(f"[compare] wrote {', '.join(str(p) for p in paths.values())} after "
              f"{time.time() - self.t0:.0f} s", file=sys.stderr)
        for r in comparison["targets"]:
            h = r.get("head_to_head")
            if h:
                noise = "beyond" if h["beyond_seed_noise"] else "within"
                print(f"[compare] {r['name']}: Fitting − Transfer = {h['fitting_minus_transfer']:+.4f} nats "
                      f"({h['margin_in_se']:+.1f} SE, {noise} the seed noise): {h['winner']} ahead", file=sys.stderr)
            for v in r["verdicts"].values():
                if v["n_seeds"]:
                    print(f"[compare] {r['name']}: {v['paradigm']} at η {v['lr']:.4g}: regret {v['regret_pct']:+.2f}% "
                          f"({v['regret_sigmas']:+.1f} σ), η / true η* {v['error_ratio_vs_eta_star']:.2f}",
                          file=sys.stderr)
