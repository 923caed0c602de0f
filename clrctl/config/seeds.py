"""``--seeds``: one meaning in every command (train, range-test, sweep).

A bare integer ``N`` means N seeds starting at the config's ``seed``; ``0,1,2`` or ``0..4``
name the seeds. Negative or repeated seeds are refused.
"""

from __future__ import annotations

from clrctl.errors import InputError

_HELP = "expected a count like 3, a list like 0,1,2 or a range like 0..4"
SEEDS_HELP = ("Seeds: a count N means N seeds from the config's seed (seed, seed+1, …); "
              "0,1,2 or 0..4 name them.")


def parse_seeds(text: str, start: int = 0) -> list[int]:
    """The seeds that ``--seeds TEXT`` names, for a config whose ``seed`` is ``start``."""
    text = str(text).strip()
    try:
        if ".." in text:
            lo, hi = text.split("..")
            seeds = list(range(int(lo), int(hi) + 1))
        elif "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            count = int(text)
            if count < 1:
                raise InputError(f"--seeds {text}: a count must be at least 1")
            seeds = list(range(start, start + count))
    except ValueError:
        raise InputError(f"--seeds: {_HELP} (got {text!r})") from None
    if not seeds:
        raise InputError(f"--seeds: {_HELP} (got {text!r}, which names no seed)")
    if any(s < 0 for s in seeds):
        raise InputError(f"--seeds: seeds must be non-negative (got {text!r})")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: seeds must be distinct (got {text!r})")
    return seeds
