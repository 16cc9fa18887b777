"""Atomic output folders: everything is written to a temp folder beside the target and renamed into place,
so a failed or interrupted run leaves nothing half-written and an existing output is replaced only on
request. Shared by prep (datasets, samples) and infer (predictions)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def temp_dir_for(out_dir: Path, tag: str = "tmp") -> Path:
    return out_dir.parent / f".{out_dir.name}.{tag}-{os.getpid()}"


def publish(temp_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Move a finished temp folder into place; an existing ``out_dir`` is replaced only with ``overwrite``."""
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists (use --overwrite to replace it)")
        old = temp_dir_for(out_dir, "old")
        out_dir.rename(old)
        temp_dir.rename(out_dir)
        shutil.rmtree(old)
    else:
        temp_dir.rename(out_dir)


def output_relation(output: Path, source: Path) -> str | None:
    """How an output path stands to an input it must never touch: "is" it, "lies inside" it (a folder), "contains"
    it, or None when apart. Both are resolved first (symbolic links and ``..`` included)."""
    target, source = output.expanduser().resolve(), source.expanduser().resolve()
    if target == source:
        return "is"
    if source.is_dir() and source in target.parents:
        return "lies inside"
    return "contains" if target in source.parents else None
