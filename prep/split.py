"""Master split by source image, made before any tiling or augmentation so nothing leaks across splits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "valid", "test")


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'0.8,0.15,0.05' → (0.8, 0.15, 0.05); three finite non-negative numbers summing to 1."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"expected three ratios train,valid,test, got {text!r}")
    try:
        ratios = tuple(float(p) for p in parts)
    except ValueError as err:
        raise ValueError(f"{text!r} is not three numbers") from err
    if not all(math.isfinite(r) for r in ratios):
        raise ValueError(f"{text!r} contains a non-finite number")
    if any(r < 0 for r in ratios):
        raise ValueError(f"ratios must not be negative, got {text!r}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must sum to 1, got {text!r} (sum {sum(ratios):g})")
    return ratios  # type: ignore[return-value]


def split_counts(n_sources: int, ratios: Sequence[float]) -> list[int]:
    """How many sources each split gets: largest remainder, then at least one per non-zero ratio."""
    exact = [n_sources * r for r in ratios]
    counts = [math.floor(e) for e in exact]
    # Ties go to the earlier split (train first), so the result does not depend on float noise order.
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n_sources - sum(counts)]:
        counts[i] += 1
    # Every split with a non-zero ratio gets a source while there are enough (train first, then valid,
    # then test), taken from the largest split that can spare one.
    guaranteed = [i for i, r in enumerate(ratios) if r > 0][:n_sources]
    for i in guaranteed:
        if counts[i] == 0:
            donors = [j for j in range(len(counts)) if counts[j] > (1 if j in guaranteed else 0)]
            donor = max(donors, key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def split_sources(sources: Sequence[str], ratios: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Assign each source to exactly one split, shuffled reproducibly by ``seed``."""
    unique = sorted(set(sources))
    if len(unique) != len(sources):
        raise ValueError("source names must be unique")
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    counts = split_counts(len(unique), ratios)
    assignment: dict[str, list[str]] = {}
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        assignment[name] = sorted(shuffled[start : start + count])
        start += count
    check_disjoint(assignment)
    return assignment


def check_disjoint(assignment: dict[str, Sequence[str]]) -> None:
    """Refuse any assignment in which a source sits in two splits."""
    seen: dict[str, str] = {}
    for split, names in assignment.items():
        for name in names:
            if name in seen and seen[name] != split:
                raise ValueError(f"source {name!r} is in both {seen[name]} and {split}: that would leak")
            seen[name] = split
