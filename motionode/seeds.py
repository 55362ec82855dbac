"""Random seeds, as the commands, the trainer and the bridge protocol take them.

A seed is a whole number from 0 to ``MAX_SEED``; equal seeds give equal motion.
The bound is the one ``bridge/protocol.py`` puts on the wire, so any seed a command
takes can also be asked of a server.
"""

from __future__ import annotations

import argparse

__all__ = ["MAX_SEED", "check_seed", "is_seed", "seed_argument"]

MAX_SEED = 2**63 - 1
EXPECTED = f"expected a whole number from 0 to {MAX_SEED}"


def is_seed(value: object) -> bool:
    """Whether ``value`` is an int (not a bool) from 0 to ``MAX_SEED``."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_SEED
    )


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` if it is a seed; otherwise a ValueError naming ``name``."""
    if not (isinstance(value, int) and is_seed(value)):
        raise ValueError(f"{name}: {EXPECTED}, got {value!r}")
    return value


def seed_argument(text: str) -> int:
    """Type of a ``--seed`` command-line option: the seed ``text`` spells, or a usage
    error (argparse names the option and exits with status 2)."""
    bad = argparse.ArgumentTypeError(f"{EXPECTED}, got {text!r}")
    try:
        value = int(text)
    except ValueError:
        raise bad from None
    if not is_seed(value):
        raise bad
    return value
