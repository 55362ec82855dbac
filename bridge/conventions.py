"""Poses in the coordinate convention a client names (PROTOCOL.md, "Conventions").

The model's rig is Y-up, right-handed, facing +Z, in the rig's own unit (``raw``).
For another convention, :func:`motionode.axes.convert_clip` gives the exact
transform: every channel column becomes one source column times a constant (a sign,
and the length scale for position channels), and the skeleton's offsets, channel
names and rotation orders change to match. The server does that once per stream
and then converts each row with one gather and one multiply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bridge import protocol as proto
from motionode.axes import PROFILES, convert_clip, get_convention
from motionode.bvh import Clip, Skeleton

__all__ = ["NAMES", "ChannelMap", "channel_map"]

NAMES = tuple(sorted(PROFILES))


@dataclass(frozen=True)
class ChannelMap:
    """Rows in the rig's convention -> rows in ``name``: ``rows[:, index] * scale``.

    Attributes:
        name: the convention.
        index: (C,) int source column of each output column.
        scale: (C,) float64 factor of each output column.
        skeleton: the JSON skeleton description in that convention.
    """

    name: str
    index: np.ndarray
    scale: np.ndarray
    skeleton: dict

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """(T, C) channel rows of the rig -> (T, C) rows in this convention."""
        if self.name == "raw":
            return rows
        return rows[:, self.index] * self.scale


def channel_map(skeleton: Skeleton, units_to_m: float, name: str) -> ChannelMap:
    """The map from the rig's channels to convention ``name`` ("raw", "blender",
    "unity", "unreal" or "godot").

    Raises:
        ValueError: an unknown convention name.
    """
    if name not in PROFILES:
        raise ValueError(
            f"convention: expected one of {', '.join(NAMES)}, got {name!r}"
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
    )
    return ChannelMap(name, index, scale, desc)
