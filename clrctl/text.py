"""Small helpers for the wording of user-facing messages (no heavy imports)."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``count(1, "step")`` -> "1 step", ``count(3, "step")`` -> "3 steps"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
