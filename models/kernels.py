"""One record per attention and expert kernel: the function, the optional package it comes
from, and what it can run on (device type, dtype, compute capability, head size, widths).

The model looks kernels up by name when it is built; the hardware step (training/hardware.py
check_kernels) asks each record, before anything is built, whether it runs on the actual device
and dtype, and fails loudly, listing the kernels that would (OLMo-core's backends do the same).
A record is data plus the few checks that need the torch build at hand; the model itself never
decides anything about hardware.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable

import torch


class BackendUnavailableError(ValueError):
    """A known kernel that this machine, package set, dtype or shape cannot run.
    A ValueError like an unknown name: either way the config value has to change."""


@dataclass(frozen=True)
class Kernel:
    name: str
    fn: Callable
    kind: str                                         # "attention" | "expert": names the config field
    summary: str                                      # one line, for listings
    package: str | None = None                        # optional package (import name) the kernel needs
    install: str = ""                                 # how to get that package
    alternatives: str = ""                            # what to use instead when it is missing
    devices: tuple[str, ...] = ("cpu", "cuda")        # device types it runs on
    cuda_dtypes: tuple[torch.dtype, ...] | None = None  # dtypes it takes on CUDA (None: any)
    min_capability: tuple[int, int] | None = None     # CUDA compute capability
    head_sizes: Callable[[int], bool] | None = None   # attention: which head sizes it takes
    head_rule: str = ""                               # ... said in words
    width_multiple: int = 1                           # d_model and expert width must be multiples of it
    compile_dtypes: tuple[torch.dtype, ...] | None = None  # dtypes torch.compile can trace it in
    runtime: Callable[[torch.device, torch.dtype], str | None] | None = None  # torch-build checks

    @property
    def field(self) -> str:
        return f"hardware.{self.kind}_backend"

    def package_missing(self) -> str | None:
        if self.package is None:
            return None
        try:
            found = importlib.util.find_spec(self.package) is not None
        except (ImportError, ValueError):  # a broken parent package counts as missing
            found = False
        return None if found else f"needs the '{self.package}' package (install it with `{self.install}`)"

    def unsupported(self, device: torch.device, dtype: torch.dtype, *, d_head: int = 0, widths: dict | None = None,
                    compile: bool = False) -> str | None:
        """Why this kernel cannot run here (None: it can)."""
        why = self.package_missing()
        if why:
            return why
        if device.type not in self.devices:
            return "needs a CUDA device (hardware=gpu)" if self.devices == ("cuda",) else f"runs on {self.devices}"
        if device.type == "cuda":
            if self.cuda_dtypes and dtype not in self.cuda_dtypes:
                return f"needs hardware.dtype={'bfloat16' if torch.bfloat16 in self.cuda_dtypes else self.cuda_dtypes}"
            cap = torch.cuda.get_device_capability(device)
            if self.min_capability and cap < self.min_capability:
                return (f"needs compute capability >= {self.min_capability[0]}.{self.min_capability[1]}; this GPU "
                        f"is sm{cap[0]}{cap[1]}")
        if self.head_sizes and d_head and not self.head_sizes(d_head):
            return f"needs a head size {self.head_rule} (d_model / n_heads = {d_head})"
        for field, width in (widths or {}).items():
            if width % self.width_multiple:
                return f"needs {field}={width} to be a multiple of {self.width_multiple} (16-byte rows)"
        if compile and self.compile_dtypes and dtype not in self.compile_dtypes:
            return "under torch.compile traces bf16 only: set hardware.dtype=bfloat16 or hardware.compile=false"
        return self.runtime(device, dtype) if self.runtime else None


def check_name(registry: dict[str, Kernel], kind: str, name: str) -> None:
    """An unknown kernel name is a config error that lists the valid ones (the config's
    validation and the model's lookup both ask here)."""
    if name not in registry:
        raise ValueError(f"hardware.{kind}_backend='{name}' is unknown; valid: {', '.join(registry)}")


def lookup(registry: dict[str, Kernel], kind: str, name: str) -> Kernel:
    """The record of a kernel by name; an unknown name lists the valid ones, a missing optional
    package says how to install it."""
    check_name(registry, kind, name)
    kernel = registry[name]
    why = kernel.package_missing()
    if why:
        raise BackendUnavailableError(f"{kind} backend '{name}' {why}, or choose another: {kernel.alternatives}")
    return kernel


def warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
