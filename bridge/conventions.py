"""Poses in the coordinate convention a client names (PROTOCOL.md, "Conventions").

The model's rig is Y-up, right-handed, facing +Z, in the rig's own unit (``raw``).
For another convention, :func:`motionode.axes.convert_clip` gives the exact
transform: every channel column becomes one source column times a constant (a sign,
and the length scale for position channels), and the skeleton's offsets, channel
names and rotation orders change to match. The server does that once per stream
and then converts each row with one gather and one multiply.

A stream may also ask for its rotations as quaternions (PROTOCOL.md, "Quaternion
poses"): each joint's position channels, converted as above, then its local
rotation as a unit quaternion, computed from the converted Euler channels with
the converted rotation orders. Since the converted local rotation is ``M R M.T``
(``M`` the axis change), the quaternion is the one of that rotation in the
convention's own axes; its vector part is ``det(M) M v`` of the rig's ``(w, v)``,
and ``w`` is unchanged, so the sign rule ``w >= 0`` means the same in every
convention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bridge import protocol as proto
from motionode.axes import PROFILES, convert_clip, get_convention
from motionode.bvh import POSITION_CHANNELS, ROTATION_CHANNELS, Clip, Skeleton
from motionode.rotations import (
    canonical_quaternion_sign,
    euler_to_quaternion,
    euler_to_quaternion_rate,
)

logger = logging.getLogger(__name__)

__all__ = ["NAMES", "QUATERNION_ORDERS", "ROTATIONS", "ChannelMap", "channel_map"]

NAMES = tuple(sorted(PROFILES))
ROTATIONS = proto.ROTATIONS

# Component order of a quaternion on the wire: that of the convention's engine.
QUATERNION_ORDERS = {
    "blender": "wxyz",  # mathutils.Quaternion((w, x, y, z))
    "godot": "xyzw",  # Quaternion(x, y, z, w)
    "raw": "wxyz",  # scalar first, as Hamilton wrote them (and as Blender)
    "unity": "xyzw",  # UnityEngine.Quaternion(x, y, z, w)
    "unreal": "xyzw",  # FQuat(X, Y, Z, W)
}


@dataclass(frozen=True)
class _Quaternions:
    """Where a quaternion pose's values come from and go, fixed per skeleton.

    Attributes:
        position_src: (P,) int, columns of the converted Euler row holding
            position channels, in output order.
        position_dst: (P,) int, their columns in the output row.
        groups: per rotation order, (order, joints (G,) int, angle columns (G, 3)
            int of the converted Euler row in that order; an axis the joint lacks
            points at column C, which holds zeros).
        quaternion_dst: (J, 4) int, output column of each joint's w, x, y, z.
        width: W, values per output row.
    """

    position_src: np.ndarray
    position_dst: np.ndarray
    groups: tuple[tuple[str, np.ndarray, np.ndarray], ...]
    quaternion_dst: np.ndarray
    width: int

    def quaternions(
        self, euler: np.ndarray, rates: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Canonical local quaternions (T, J, 4) ``(w, x, y, z)`` of converted
        Euler rows (T, C) in degrees, and, given the rows' rates (T, C) in degrees
        per second, the quaternions' exact derivatives (T, J, 4) per second."""
        count, num_joints = euler.shape[0], self.quaternion_dst.shape[0]
        zero = np.zeros((count, 1))
        angles = np.radians(np.concatenate([euler, zero], axis=1))  # (T, C + 1)
        q = np.zeros((count, num_joints, 4))
        q[..., 0] = 1.0  # a joint without rotation channels: identity
        speeds = None if rates is None else np.radians(np.concatenate([rates, zero], 1))
        dq = None if speeds is None else np.zeros((count, num_joints, 4))
        for order, joints, columns in self.groups:
            q[:, joints] = euler_to_quaternion(angles[:, columns], order)
            if speeds is not None:
                dq[:, joints] = euler_to_quaternion_rate(
                    angles[:, columns], speeds[:, columns], order
                )
        sign = canonical_quaternion_sign(q)[..., None]  # (T, J, 1)
        return q * sign, None if dq is None else dq * sign

    def rows(self, euler: np.ndarray, rates: np.ndarray | None) -> np.ndarray:
        """Output rows (T, W), or (T, 2W) values then rates, of converted Euler
        rows (T, C) and their rates (T, C)."""
        q, dq = self.quaternions(euler, rates)
        out = np.empty(
            (euler.shape[0], self.width if rates is None else 2 * self.width)
        )
        out[:, self.position_dst] = euler[:, self.position_src]
        out[:, self.quaternion_dst] = q
        if rates is not None:
            out[:, self.width + self.position_dst] = rates[:, self.position_src]
            out[:, self.width + self.quaternion_dst] = dq
        return out


@dataclass(frozen=True)
class ChannelMap:
    """Rows in the rig's convention -> rows in ``name``: ``rows[:, index] * scale``,
    and, for quaternion rotations, those rows turned into quaternion poses.

    Attributes:
        name: the convention.
        index: (C,) int source column of each output column.
        scale: (C,) float64 factor of each output column.
        skeleton: the JSON skeleton description in that convention.
        rotations: "euler" (rows of channels) or "quaternion".
    """

    name: str
    index: np.ndarray
    scale: np.ndarray
    skeleton: dict
    rotations: str = "euler"
    _quaternions: _Quaternions | None = None

    @property
    def width(self) -> int:
        """Values per pose: C for Euler rows, W for quaternion poses."""
        if self._quaternions is None:
            return int(self.index.shape[0])
        return self._quaternions.width

    def _euler(self, rows: np.ndarray) -> np.ndarray:
        if self.name == "raw":
            return rows
        return rows[:, self.index] * self.scale

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """(T, C) channel rows of the rig -> (T, ``width``) poses in this
        convention."""
        if self._quaternions is None:
            return self._euler(rows)
        return self._quaternions.rows(self._euler(rows), None)

    def apply_with_velocities(self, rows: np.ndarray, rates: np.ndarray) -> np.ndarray:
        """(T, C) channel rows of the rig and their (T, C) time derivatives ->
        (T, 2 ``width``): the poses in this convention, then their exact time
        derivatives (for quaternions by the chain rule through the Euler rates)."""
        if self._quaternions is None:
            # The convention is linear per column: derivatives convert like values.
            return np.concatenate([self._euler(rows), self._euler(rates)], axis=1)
        return self._quaternions.rows(self._euler(rows), self._euler(rates))


def _quaternion_layout(
    skeleton: Skeleton, order: str
) -> tuple[_Quaternions, list[list[str]], list[int]]:
    """The plan of a quaternion pose of ``skeleton`` (already in the convention),
    each joint's value names, and where each joint's values start."""
    starts = skeleton.channel_starts()
    c = skeleton.num_channels
    position_src, position_dst, quaternion_dst = [], [], []
    layout, value_starts = [], []
    by_order: dict[str, tuple[list[int], list[list[int]]]] = {}
    width = 0
    for j, chans in enumerate(skeleton.channels):
        value_starts.append(width)
        names = []
        for k, name in enumerate(chans):
            if name in POSITION_CHANNELS:
                position_src.append(starts[j] + k)
                position_dst.append(width)
                names.append(name)
                width += 1
        quaternion_dst.append([width + order.index(a) for a in "wxyz"])
        names.extend(f"q{a}" for a in order)
        width += 4
        layout.append(names)
        rotation = [k for k, n in enumerate(chans) if n in ROTATION_CHANNELS]
        if rotation:
            axes = skeleton.rotation_order(j)
            column = {chans[k][0]: starts[j] + k for k in rotation}
            joints, columns = by_order.setdefault(axes, ([], []))
            joints.append(j)
            columns.append([column.get(a, c) for a in axes])
    groups = tuple(
        (axes, np.array(joints), np.array(columns, dtype=np.int64).reshape(-1, 3))
        for axes, (joints, columns) in sorted(by_order.items())
    )
    plan = _Quaternions(
        np.array(position_src, dtype=np.int64),
        np.array(position_dst, dtype=np.int64),
        groups,
        np.array(quaternion_dst, dtype=np.int64).reshape(-1, 4),
        width,
    )
    return plan, layout, value_starts


def channel_map(
    skeleton: Skeleton, units_to_m: float, name: str, rotations: str = "euler"
) -> ChannelMap:
    """The map from the rig's channels to convention ``name`` ("raw", "blender",
    "unity", "unreal" or "godot"), with rotations as Euler channels ("euler") or
    as quaternions ("quaternion").

    Raises:
        ValueError: an unknown convention name or rotations value.
    """
    if name not in PROFILES:
        raise ValueError(
            f"convention: expected one of {', '.join(NAMES)}, got {name!r}"
        )
    if rotations not in ROTATIONS:
        raise ValueError(
            f"rotations: expected one of {', '.join(ROTATIONS)}, got {rotations!r}"
        )
    c = skeleton.num_channels
    ones = convert_clip(
        Clip(skeleton, np.ones((1, c)), 1.0), name, units_to_m=units_to_m
    )
    probe = np.arange(1.0, c + 1.0)[None]  # (1, C): column j holds j + 1
    moved = convert_clip(Clip(skeleton, probe, 1.0), name, units_to_m=units_to_m)
    scale = ones.motion[0]  # (C,)
    index = np.rint(moved.motion[0] / scale).astype(np.int64) - 1  # (C,)
    dst = get_convention(name)
    unit_m = dst.unit_m if dst.unit_m is not None else units_to_m
    desc = proto.describe_skeleton(ones.skeleton, unit_m)
    desc.update(
        convention=name,
        up_axis=dst.up.lstrip("+"),
        forward_axis=dst.forward,
        handedness="right" if dst.right_handed else "left",
        rotations=rotations,
    )
    if rotations == "euler":
        return ChannelMap(name, index, scale, desc)
    order = QUATERNION_ORDERS[name]
    plan, layout, value_starts = _quaternion_layout(ones.skeleton, order)
    desc.update(
        quaternion_order=order,
        quaternion_sign="w>=0",
        rotation_space="local",
        layout=layout,
        value_starts=value_starts,
        num_values=plan.width,
    )
    logger.debug(
        "quaternion poses in %s: %d values per pose, order %s", name, plan.width, order
    )
    return ChannelMap(name, index, scale, desc, rotations, plan)
