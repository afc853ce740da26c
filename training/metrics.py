"""Metrics: a plain JSONL log always, wandb when asked, a progress bar on the console."""
from __future__ import annotations

import sys
from pathlib import Path

from .branches import is_branch_row
from .config import LoggingConfig
from .io import append_jsonl, read_jsonl, write_text, dumps


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg: LoggingConfig, config_dict: dict, run_name: str, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = None
        if enabled and cfg.wandb.mode != "disabled":  # the mode was validated with the config
            import wandb
            self.wandb = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, name=run_name,
                                    mode=cfg.wandb.mode, config=config_dict, tags=list(cfg.wandb.tags),
                                    dir=str(run_dir), id=run_name.replace("/", "_")[-64:], resume="allow")

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so no step appears twice. A decay
        branch forking at the checkpoint's step runs again after it, so its row goes too."""
        if self.enabled and self.path.exists():
            rows = [r for r in read_jsonl(self.path)
                    if r.get("step", 0) < step or (r.get("step", 0) == step and not is_branch_row(r))]
            write_text(self.path, "".join(dumps(r) + "\n" for r in rows))

    def reset(self) -> None:
        """A run starting from step 0 owns an empty log."""
        if self.enabled and self.path.exists():
            write_text(self.path, "")

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, row)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if not isinstance(v, list)}, step=row["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, unit="step", mininterval=1.0)
