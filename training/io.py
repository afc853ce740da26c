"""Atomic writes and the project's one JSON / JSONL convention: nothing a user produced is
half-written, and every table is read the same way. Imports nothing heavy (no torch), so the
analysis library and tools without torch can use it too.

JSON has no NaN or infinity: `jsonable` writes every non-finite number as null, and readers
take null as "not measured".
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonable(x: Any) -> Any:
    """Plain JSON types: dict keys as strings, numpy / pandas / torch scalars and arrays as Python
    numbers and lists, non-finite numbers as null; anything else unknown as its str()."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [jsonable(v) for v in x]
    if x is None or isinstance(x, (str, bool)):
        return x
    if hasattr(x, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(x.tolist())
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if type(x).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    return str(x)


def dumps(obj: Any, **kw) -> str:
    return json.dumps(jsonable(obj), **kw)


def write_json(path: Path, obj: Any) -> None:
    data = (dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    _atomic(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def save_torch(path: Path, obj: Any) -> None:
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


def append_jsonl(path: Path, row: dict) -> None:
    """Append one line and fsync; a kill can at worst truncate the last line (readers skip it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path, *, warn_truncated: bool = False) -> list[dict]:
    """The JSON-object rows of a JSONL file ([] when it does not exist).

    Writers append one fsync'ed line at a time, so a kill can only cut the *last* line short:
    that line is skipped (with a warning when `warn_truncated`). A bad line anywhere else means
    the file was damaged, not interrupted: ValueError naming the line and the fix."""
    path = Path(path)
    if not path.exists():
        return []
    numbered = [(i + 1, line) for i, line in enumerate(path.read_text().splitlines()) if line.strip()]
    rows = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if k == len(numbered) - 1:
                if warn_truncated:
                    warnings.warn(f"{path}:{lineno}: skipping an unparseable last line (probably cut short by "
                                  f"a kill): {err}", stacklevel=2)
                continue
            raise ValueError(f"{path}:{lineno}: corrupt line in the middle of the file ({err}); repair or "
                             "delete that line and re-run") from None
        rows.append(row)
    return rows
