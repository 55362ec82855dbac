"""Exact, JSON-safe values for stream snapshots, and the checks that read them back.

A snapshot (see :meth:`motionode.generate.PoseStream.snapshot`) must carry float64
values without the rounding a decimal JSON number may suffer in another language's
parser, so:

- a float64 scalar is a string written by :meth:`float.hex`, e.g.
  ``"0x1.8000000000000p+1"`` for 3.0;
- a float64 array is a string holding the base64 (RFC 4648, with padding) of its
  values as little-endian IEEE-754 doubles, ``"<f8"``, in order.

Every reader here raises :class:`SnapshotError` naming the field (a dotted path
such as ``snapshot.current.state``) for any value that is missing, of the wrong
type, the wrong size or not finite, so a damaged snapshot never reaches torch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "SnapshotError",
    "check_fields",
    "digest",
    "read_array",
    "read_bool",
    "read_float",
    "read_int",
    "read_list",
    "read_object",
    "read_str",
    "write_array",
    "write_float",
]

MAX_HEX_CHARS = 32  # "-0x1.fffffffffffffp+1023" is 24 characters
MAX_ARRAY_VALUES = 1 << 16  # doubles in one array field


class SnapshotError(ValueError):
    """A snapshot that is damaged, or that does not fit the model it is restored
    with. ``field`` names the offending field as a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def write_float(value: float) -> str:
    """A finite float64 as its exact hexadecimal string."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value: {value!r} is not finite")
    return value.hex()


def write_array(values: Any) -> str:
    """A float64 array (any shape, written flat in C order) as base64 of "<f8"."""
    flat = np.ascontiguousarray(np.asarray(values, dtype="<f8")).reshape(-1)
    return base64.b64encode(flat.tobytes()).decode("ascii")


def read_object(field: str, value: Any, keys: Sequence[str]) -> Mapping:
    """A JSON object with exactly the fields ``keys``."""
    if not isinstance(value, Mapping):
        raise SnapshotError(field, f"expected an object, got {_short(value)}")
    check_fields(field, value, keys)
    return value


def check_fields(field: str, value: Mapping, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in value]
    unknown = sorted(str(k) for k in value if k not in keys)
    if missing:
        raise SnapshotError(field, f"missing field(s) {missing}")
    if unknown:
        raise SnapshotError(field, f"unknown field(s) {unknown}")


def read_str(field: str, value: Any, max_chars: int = 256) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise SnapshotError(
            field,
            f"expected a string of 1 to {max_chars} characters, got {_short(value)}",
        )
    return value


def read_int(field: str, value: Any, low: int, high: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool)):
        raise SnapshotError(field, f"expected an integer, got {_short(value)}")
    if not low <= value <= high:
        raise SnapshotError(
            field, f"expected an integer from {low} to {high}, got {value}"
        )
    return value


def read_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SnapshotError(field, f"expected true or false, got {_short(value)}")
    return value


def read_float(
    field: str, value: Any, low: float = -math.inf, high: float = math.inf
) -> float:
    """A float64 written by :func:`write_float`, finite and in [low, high]."""
    if not isinstance(value, str) or len(value) > MAX_HEX_CHARS:
        raise SnapshotError(
            field, f"expected a hexadecimal float string, got {_short(value)}"
        )
    try:
        number = float.fromhex(value)
    except (ValueError, OverflowError):
        raise SnapshotError(
            field, f"expected a hexadecimal float string, got {_short(value)}"
        ) from None
    if not math.isfinite(number):
        raise SnapshotError(field, f"expected a finite number, got {_short(value)}")
    if not low <= number <= high:
        raise SnapshotError(
            field, f"expected a number from {low:g} to {high:g}, got {number!r}"
        )
    return number


def read_array(field: str, value: Any, size: int) -> np.ndarray:
    """(size,) float64 from a string written by :func:`write_array`; every value
    finite."""
    if not isinstance(value, str) or len(value) > 4 * MAX_ARRAY_VALUES * 8 // 3 + 4:
        raise SnapshotError(field, f"expected a base64 string, got {_short(value)}")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SnapshotError(
            field, f"expected a base64 string, got {_short(value)}"
        ) from None
    if len(raw) != 8 * size:
        raise SnapshotError(
            field,
            f"expected {size} float64 values ({8 * size} bytes), got {len(raw)} bytes",
        )
    values = np.frombuffer(raw, dtype="<f8").astype(np.float64)  # (size,)
    if not np.isfinite(values).all():
        raise SnapshotError(field, "expected finite values, got NaN or infinity")
    return values


def read_list(field: str, value: Any, max_items: int) -> list:
    if not isinstance(value, list) or len(value) > max_items:
        raise SnapshotError(
            field, f"expected a list of at most {max_items} items, got {_short(value)}"
        )
    return value


def digest(*parts: bytes) -> str:
    """SHA-256 of length-prefixed parts, hexadecimal."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()
