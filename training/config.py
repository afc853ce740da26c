"""The top-level typed config. Hydra composes YAML onto this schema, so a misspelled
key or a wrong type is an error, and `to_object` runs every dataclass's validation: each
group's config validates itself where its schema lives (models/config.py, optim/config.py,
data/config.py, parametrization/config.py and the dataclasses below), and `Config` checks what
spans groups. train.py calls `to_object` first, so a bad value fails in seconds, naming the
field, before any corpus or model is built.

Neither Hydra nor OmegaConf is imported at module load: the model, the kernels, the hardware
step and the benchmarks run on a machine that has torch alone.

One hole in that: Hydra's `+key=value` adds a key even to a typed node (its own hint for
a misspelled key is to add the `+`), and the dataclass then drops it silently.
`check_known_keys` closes it: every key of the composed config must be a field of its
node's dataclass. Nodes that are plain dicts (none today; a `Dict[...]` field would be
one) stay open on purpose.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

from lrscale.data.config import DataConfig
from lrscale.models.config import ModelConfig
from lrscale.optim.config import OptimConfig, ScheduleConfig
from lrscale.parametrization.config import ParametrizationConfig

if TYPE_CHECKING:
    from omegaconf import DictConfig

MISSING = "???"  # omegaconf.MISSING: a value the defaults list must supply
DTYPES = ("float32", "bfloat16")
DEVICES = ("cpu", "cuda", "auto")
DATA_PARALLEL = ("none", "ddp", "fsdp")


@dataclass
class TrainConfig:
    steps: int = 600                  # optimizer steps of the main run
    batch_size: int = 16              # global batch, in sequences
    micro_batch_size: int = 0         # per-rank micro-batch for gradient accumulation; 0 = whole per-rank batch
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 200             # 0 = only at the end
    seed: int = 0
    divergence_factor: float = 2.0    # diverged when the train loss exceeds this x its first value (or is not finite)
    probe_every: int = 0              # training probes (activation RMS, update sizes, ...); 0 = off

    def __post_init__(self) -> None:
        for name, lowest, meaning in (
                ("steps", 1, "optimizer steps of the main run"), ("batch_size", 1, "global batch, in sequences"),
                ("micro_batch_size", 0, "0 = the whole per-rank batch"), ("eval_every", 1, "steps between evals"),
                ("eval_batches", 1, "validation batches per eval"), ("ckpt_every", 0, "0 = only at the end"),
                ("probe_every", 0, "0 = off")):
            value = getattr(self, name)
            if value < lowest:
                raise ValueError(f"train.{name}={value} must be >= {lowest} ({meaning}); set train.{name} to at least {lowest}")
        if not self.divergence_factor > 1.0:
            raise ValueError(f"train.divergence_factor={self.divergence_factor} must be > 1 (a run diverged when its "
                             "loss exceeds this multiple of its first loss; 2.0 is the default)")


@dataclass
class HardwareConfig:
    device: str = "cpu"               # cpu | cuda | auto
    dtype: str = "float32"            # float32 | bfloat16 (autocast; master weights stay fp32)
    attention_backend: str = "sdpa"
    expert_backend: str = "grouped_mm"
    compile: bool = False
    tf32: bool = True                 # CUDA fp32 matmuls in TF32 (hardware=gpu turns it off: bf16 autocast runs the
                                      # big matmuls, and TF32 would make the "fp32" router and fp32 paths 10-bit)
    fused_optimizer: Optional[bool] = None  # None = fused AdamW on CUDA, foreach on CPU
    activation_checkpointing: bool = False
    num_threads: int = 0              # CPU intra-op threads; 0 = torch's default
    data_parallel: str = "none"       # none | ddp | fsdp (under torchrun; none with several ranks = ddp)

    def __post_init__(self) -> None:
        """Names only: whether this device can run them is checked when the run starts
        (training/hardware.py check_kernels), where the device is known."""
        from lrscale.models import ATTENTION_KERNELS, EXPERT_KERNELS
        from lrscale.models.kernels import check_name

        for name, value, valid in (("device", self.device, DEVICES), ("dtype", self.dtype, DTYPES),
                                   ("data_parallel", self.data_parallel, DATA_PARALLEL)):
            if value not in valid:
                raise ValueError(f"hardware.{name}='{value}' is unknown; valid: {', '.join(valid)}")
        check_name(ATTENTION_KERNELS, "attention", self.attention_backend)
        check_name(EXPERT_KERNELS, "expert", self.expert_backend)
        if self.num_threads < 0:
            raise ValueError(f"hardware.num_threads={self.num_threads} must be >= 0 (0 = torch's default)")


@dataclass
class WandbConfig:
    mode: str = "disabled"            # online | offline | disabled
    project: str = "lrscale"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logging.wandb.mode='{self.mode}' is unknown; valid: online, offline, disabled")


@dataclass
class LoggingConfig:
    log_every: int = 10
    progress: bool = True             # console progress bar
    print_param_table: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ValueError(f"logging.log_every={self.log_every} must be >= 1 (steps between metrics rows)")


@dataclass
class RunConfig:
    root: str = "runs"                # where run directories live
    name: str = ""                    # run directory name; "" = <model>-<parametrization>-<config hash>
    resume: str = "auto"              # auto: continue if a checkpoint exists | never: refuse an existing dir
    keep_checkpoint: bool = True      # keep the last checkpoint after a run completes

    def __post_init__(self) -> None:
        if self.resume not in ("auto", "never"):
            raise ValueError(f"run.resume='{self.resume}' is unknown; valid: auto, never")


@dataclass
class SweepConfig:
    """A sweep is a Hydra multirun (the grid lives in `hydra.sweeper.params`, see
    configs/experiment/fit_grid.yaml); these fields say where its jobs report and what
    the sweep callback (hydra_plugins/lrscale/callbacks.py) does when the multirun ends."""
    enabled: bool = False             # jobs append their rows to <dir>/results.jsonl; crashes become rows
    dir: str = "sweeps/default"
    fit: bool = True                  # fit the laws (analysis/) when the multirun ends
    extrapolate_tokens: List[float] = field(default_factory=list)  # Eq. 4 horizons to add optima at


@dataclass
class Config:
    model: ModelConfig = MISSING
    parametrization: ParametrizationConfig = field(default_factory=ParametrizationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    experiment: str = ""              # set by configs/experiment/*.yaml (their name)

    def __post_init__(self) -> None:
        """Checks that span several groups (each group validates itself)."""
        from lrscale.optim.schedules import validate_schedule

        from .branches import plan_forks

        validate_schedule(self.schedule, self.train.steps)
        if self.schedule.decay_branches and self.optim.horizon_beta:
            raise ValueError("schedule.decay_branches with optim.horizon_beta != 0: the horizon rule sets one LR "
                             "for the whole run, so a branch would not equal a separate run to its budget; "
                             "use one of the two")
        if not isinstance(self.model, str):  # "???" when composed without a model (never in train.py)
            plan_forks(self.schedule, self.train.steps, self.train.batch_size * self.model.seq_len,
                       warn=lambda msg: None)  # raises for a budget that cannot be measured


def register_configs() -> None:
    """The schema and every group's node, for Hydra's defaults lists (`- schema`, `model_schema`, ...)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, node in (("model", ModelConfig), ("parametrization", ParametrizationConfig),
                        ("optim", OptimConfig), ("schedule", ScheduleConfig), ("data", DataConfig),
                        ("logging", LoggingConfig), ("hardware", HardwareConfig)):
        cs.store(group=group, name=f"{group}_schema", node=node)


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys of a composed config that are no field of their node's dataclass,
    each with a suggestion when one field is close ("train.stepz (did you mean train.steps?)")."""
    from omegaconf import OmegaConf

    schema = OmegaConf.get_type(cfg)
    fields = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    found = []
    for key in cfg.keys():
        if prefix == "" and key == "hydra":  # Hydra's own node (present in callbacks), not the job's
            continue
        path = f"{prefix}{key}"
        if fields is not None and key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            found.append(f"{path} (did you mean {prefix}{close[0]}?)" if close else
                         f"{path} (valid: {', '.join(fields)})")
            continue
        child = cfg._get_node(key)
        if OmegaConf.is_dict(child) and not OmegaConf.is_missing(cfg, key):
            found += unknown_keys(child, f"{path}.")
    return found


def check_known_keys(cfg: DictConfig) -> None:
    unknown = unknown_keys(cfg)
    if unknown:
        raise ValueError(f"unknown config key(s): {'; '.join(unknown)}. These are not in the schema "
                         "(training/config.py and the groups' dataclasses), so they would be ignored; fix the name "
                         "and drop the '+' (without it Hydra checks the name)")


def to_object(cfg: DictConfig) -> Config:
    """Check the keys, resolve interpolations and build the dataclasses (running their validation)."""
    from omegaconf import OmegaConf

    check_known_keys(cfg)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]
