"""The motionode bridge protocol, version 1, as far as this add-on speaks it.

Written from the protocol text alone (``bridge/PROTOCOL.md`` in the motionode
repository), so the add-on needs nothing of motionode itself: control requests
and replies are UTF-8 JSON objects, one per ZeroMQ frame; a ``pull`` reply adds a
second frame of little-endian float32 rows. This module has no sockets and imports
neither ``bpy`` nor ``zmq``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_PULL_TIMES",
    "MAX_REQUEST_BYTES",
    "VERSION",
    "ProtocolError",
    "SkeletonDesc",
    "decode_pull",
    "decode_reply",
    "encode_request",
]

VERSION = 1
MAX_PULL_TIMES = 256  # times one pull may ask for
MAX_REQUEST_BYTES = 65536  # a larger request makes ZeroMQ drop the connection
POSITIONS = ("Xposition", "Yposition", "Zposition")
ROTATIONS = ("Xrotation", "Yrotation", "Zrotation")


class ProtocolError(Exception):
    """An error reply (``code`` as the server sent it) or a malformed message
    (``code`` "bad_reply")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _short(value: Any, size: int = 60) -> str:
    """repr of ``value`` cut to ``size`` characters, for messages."""
    text = repr(value)
    return text if len(text) <= size else text[: size - 3] + "..."


def encode_request(
    request_id: int, op: str, retry: bool = False, **fields: Any
) -> bytes:
    """One request frame: ``{"v": 1, "id": ..., "op": ..., fields}`` as UTF-8 JSON.

    Floats are written with ``repr``, so the server reads back the exact doubles.

    Raises:
        ValueError: a field is NaN or infinite, or the request is over the size
            limit.
    """
    body = {"v": VERSION, "id": request_id, "op": op, **fields}
    if retry:
        body["retry"] = True
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(
            f"{op}: request of {len(data)} bytes, over the limit of {MAX_REQUEST_BYTES}"
        )
    return data


def decode_reply(data: bytes) -> dict:
    """The reply object of a reply's first frame.

    Raises:
        ProtocolError: "bad_reply" if the frame is not a version 1 reply object;
            an error reply is returned as it is (``ok`` false), not raised.
    """
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("bad_reply", f"{_short(data[:40])}: {exc}") from None
    if not (
        isinstance(obj, dict)
        and obj.get("v") == VERSION
        and "id" in obj
        and isinstance(obj.get("ok"), bool)
    ):
        raise ProtocolError(
            "bad_reply", f"expected a version {VERSION} reply, got {_short(obj)}"
        )
    if not obj["ok"]:
        error = obj.get("error")
        if not (isinstance(error, dict) and isinstance(error.get("code"), str)):
            raise ProtocolError("bad_reply", f"error without a code: {_short(obj)}")
    return obj


def decode_pull(reply: dict, frames: list[bytes], asked: int) -> np.ndarray:
    """The (T, C) float32 poses of a ``pull`` reply.

    Args:
        reply: the reply object (first frame), already decoded.
        frames: the frames after it; exactly one of ``T * C * 4`` bytes.
        asked: T, the number of times the request asked for.

    Raises:
        ProtocolError: "bad_reply" if counts, dtype or sizes disagree.
    """
    count, channels = reply.get("count"), reply.get("channels")
    if count != asked or not isinstance(channels, int) or channels < 0:
        raise ProtocolError(
            "bad_reply",
            f"pull: asked for {asked} poses, reply says count {_short(count)}, "
            f"channels {_short(channels)}",
        )
    if reply.get("dtype") != "<f4":
        raise ProtocolError(
            "bad_reply", f"pull: expected dtype '<f4', got {_short(reply.get('dtype'))}"
        )
    size = count * channels * 4
    if len(frames) != 1 or len(frames[0]) != size:
        sizes = [len(f) for f in frames]
        raise ProtocolError(
            "bad_reply", f"pull: expected one data frame of {size} bytes, got {sizes}"
        )
    rows = np.frombuffer(frames[0], dtype="<f4")  # (T * C,)
    return rows.reshape(count, channels)  # (T, C)


@dataclass(frozen=True)
class SkeletonDesc:
    """A checked skeleton description (PROTOCOL.md, section 4).

    Attributes:
        names: J joint names, parents before children.
        parents: (J,) int, -1 for the root.
        offsets: (J, 3) float64 rest offsets from the parent, rig units.
        channels: per joint, its channel names in pose order.
        rotation_orders: per joint, e.g. "ZXY": rotation axes in channel order,
            missing axes appended.
        channel_starts: (J,) int, index of each joint's first channel in a pose.
        num_channels: C, values per pose.
        end_parents: (E,) int, the joint each end site hangs from.
        end_offsets: (E, 3) float64 end site offsets, rig units.
        units_to_m: metres per rig unit.
    """

    names: tuple[str, ...]
    parents: np.ndarray
    offsets: np.ndarray
    channels: tuple[tuple[str, ...], ...]
    rotation_orders: tuple[str, ...]
    channel_starts: np.ndarray
    num_channels: int
    end_parents: np.ndarray
    end_offsets: np.ndarray
    units_to_m: float

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def has_position(self, joint: int) -> bool:
        """Whether any position channel of ``joint`` replaces its offset."""
        return any(c in POSITIONS for c in self.channels[joint])

    def fingerprint(self) -> str:
        """A short text that changes when names or hierarchy change."""
        parts = [f"{n}<{p}" for n, p in zip(self.names, self.parents.tolist())]
        return "|".join(parts)

    @classmethod
    def from_json(cls, desc: Any) -> SkeletonDesc:
        """Check a description received from a server.

        Raises:
            ProtocolError: "bad_skeleton", naming the field, the joint and the value.
        """
        if not isinstance(desc, dict):
            raise _bad("skeleton", "an object", desc)
        for key, want in (("up_axis", "Y"), ("handedness", "right")):
            if desc.get(key) != want:
                raise _bad(key, repr(want), desc.get(key))
        if desc.get("angle_unit") != "degrees":
            raise _bad("angle_unit", "'degrees'", desc.get("angle_unit"))
        names = desc.get("names")
        if not (
            isinstance(names, list) and names and all(isinstance(n, str) for n in names)
        ):
            raise _bad("names", "a non-empty list of strings", names)
        num_joints = len(names)
        parents = _ints(desc, "parents", num_joints)
        for j, p in enumerate(parents.tolist()):
            if not (p == -1 if j == 0 else 0 <= p < j):
                raise _bad(f"parents[{j}]", f"an index below {j}", p)
        offsets = _vectors(desc, "offsets", num_joints)
        channels = desc.get("channels")
        if not (isinstance(channels, list) and len(channels) == num_joints):
            raise _bad("channels", f"{num_joints} lists", channels)
        for j, chans in enumerate(channels):
            if not (
                isinstance(chans, list)
                and len(chans) <= 6
                and all(c in POSITIONS + ROTATIONS for c in chans)
                and len(set(chans)) == len(chans)
            ):
                raise _bad(f"channels[{j}]", "0 to 6 distinct channel names", chans)
        orders = desc.get("rotation_orders")
        if not (isinstance(orders, list) and len(orders) == num_joints):
            raise _bad("rotation_orders", f"{num_joints} strings", orders)
        for j, order in enumerate(orders):
            own = "".join(c[0] for c in channels[j] if c in ROTATIONS)
            if not (isinstance(order, str) and sorted(order) == list("XYZ")) or (
                not order.startswith(own)
            ):
                raise _bad(f"rotation_orders[{j}]", f"an order starting {own!r}", order)
        starts = _ints(desc, "channel_starts", num_joints)
        counts = np.array([len(c) for c in channels])
        if starts.tolist() != (np.cumsum(counts) - counts).tolist():
            raise _bad(
                "channel_starts", "running totals of channel counts", starts.tolist()
            )
        if desc.get("num_channels") != int(counts.sum()):
            raise _bad("num_channels", str(int(counts.sum())), desc.get("num_channels"))
        end_parents = _ints(desc, "end_parents", None)
        if any(not 0 <= p < num_joints for p in end_parents.tolist()):
            raise _bad(
                "end_parents", f"joint indices below {num_joints}", end_parents.tolist()
            )
        end_offsets = _vectors(desc, "end_offsets", len(end_parents))
        units = desc.get("units_to_m")
        if not (_is_number(units) and math.isfinite(units) and units > 0):
            raise _bad("units_to_m", "a positive number", units)
        return cls(
            tuple(names),
            parents,
            offsets,
            tuple(tuple(c) for c in channels),
            tuple(orders),
            starts,
            int(counts.sum()),
            end_parents,
            end_offsets,
            float(units),
        )


def _bad(field: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(
        "bad_skeleton", f"{field}: expected {expected}, got {_short(value)}"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ints(desc: dict, key: str, length: int | None) -> np.ndarray:
    """(length,) int array of field ``key``; any length when ``length`` is None."""
    value = desc.get(key)
    if not (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise _bad(
            key, f"{length if length is not None else 'a list of'} integers", value
        )
    return np.array(value, dtype=np.int64).reshape(-1)


def _vectors(desc: dict, key: str, length: int) -> np.ndarray:
    """(length, 3) float64 array of field ``key``."""
    value = desc.get(key)
    ok = isinstance(value, list) and len(value) == length
    ok = ok and all(
        isinstance(v, list)
        and len(v) == 3
        and all(_is_number(x) and math.isfinite(x) for x in v)
        for v in value
    )
    if not ok:
        raise _bad(key, f"{length} finite 3-vectors", value)
    return np.array(value, dtype=np.float64).reshape(length, 3)
