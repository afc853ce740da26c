"""What the attention and expert kernel registries share: the error for a backend
that exists but cannot run here, and the check that its optional package imports.

Device and dtype support is decided outside models/ (training/hardware.py); this file
only answers "is the package there", which needs no device.
"""
from __future__ import annotations

import importlib.util


class BackendUnavailableError(ValueError):
    """A known backend name that this machine, package set or dtype cannot run.

    A ValueError like an unknown name: either way the config value has to change.
    """


def require_package(kind: str, backend: str, module: str, install: str, alternatives: str) -> None:
    """Fail at build time, saying how to install `module`, when it does not import."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package counts as missing
        found = False
    if not found:
        raise BackendUnavailableError(
            f"{kind} backend '{backend}' needs the '{module}' package, which is not importable here. "
            f"Install it with `{install}`, or choose another: {alternatives}"
        )
