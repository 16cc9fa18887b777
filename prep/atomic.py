"""Atomic output folders: everything is written to a temp folder beside the target and renamed into place,
so a failed or interrupted run leaves nothing half-written and an existing output is replaced only on
request. Shared by prep (datasets, samples), infer (predictions) and the benches' fold folders.

A run killed outright (kill -9) cannot clean up after itself: its ``.NAME.tmp-PID`` (and, if it died while
replacing, ``.NAME.old-PID``, the previous output) are cleaned by the next run to the same output once that PID
is gone, the previous output put back when nothing replaced it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path


class OutputError(OSError):
    """An output folder that cannot be made where it was asked for; the message names it and why."""


def temp_dir_for(out_dir: Path, tag: str = "tmp") -> Path:
    return out_dir.parent / f".{out_dir.name}.{tag}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove the temp folders that killed runs left beside ``out_dir`` (their PID gone); an ``old`` one, the
    output a killed run was replacing, is put back when ``out_dir`` is missing. Returns what was cleaned."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(tmp|old)-(\d+)")
    cleaned = []
    if not out_dir.parent.is_dir():
        return cleaned
    for entry in sorted(out_dir.parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if not match or int(match[2]) == os.getpid() or pid_alive(int(match[2])):
            continue
        if match[1] == "old" and not out_dir.exists():
            entry.rename(out_dir)
            warnings.warn(f"{out_dir}: put back the previous output that a killed run left as {entry.name}",
                          stacklevel=2)
        else:
            with contextlib.suppress(OSError):
                remove(entry)
        cleaned.append(entry)
    return cleaned


def publish(temp_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Move a finished temp folder into place; an existing ``out_dir`` is replaced only with ``overwrite``, and
    is back as it was if the move fails."""
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists (use --overwrite to replace it)")
        old = temp_dir_for(out_dir, "old")
        out_dir.rename(old)
        try:
            temp_dir.rename(out_dir)
        except BaseException:
            old.rename(out_dir)
            raise
        remove(old)
    else:
        temp_dir.rename(out_dir)


def remove(path: Path) -> None:
    """Delete a replaced output: a symbolic link itself (its target is not ours to delete), else the folder."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_output(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """An empty temp folder beside ``out_dir`` to write into; published as ``out_dir`` when the block ends
    normally, removed whatever happens. Killed runs' leftovers are cleaned first (``clean_stale``)."""
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (use --overwrite to replace it)")
    temp = temp_dir_for(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out_dir)
        if temp.exists():
            shutil.rmtree(temp)
        temp.mkdir()
    except OSError as err:
        raise OutputError(f"{out_dir}: cannot write the output folder here "
                          f"({err.strerror or err}: {err.filename or out_dir.parent})") from None
    try:
        yield temp
        publish(temp, out_dir, overwrite)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def output_relation(output: Path, source: Path) -> str | None:
    """How an output path stands to an input it must never touch: "is" it, "lies inside" it (a folder), "contains"
    it, or None when apart. Both are resolved first (symbolic links and ``..`` included)."""
    target, source = output.expanduser().resolve(), source.expanduser().resolve()
    if target == source:
        return "is"
    if source.is_dir() and source in target.parents:
        return "lies inside"
    return "contains" if target in source.parents else None
