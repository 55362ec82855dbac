"""Per-frame pose features a network can learn from, and their exact inverse.

A frame becomes one vector (D,) laid out as::

    [root_height (1), root_velocity (2), turn_rate (1), root_rot6d (6),
     joint_rot6d (6 per rotating joint)]

- The *root* is the top joint that actually moves ("Hips" in a rig whose ROOT is a
  static reference joint); joints above it are constant and kept as channel values.
  Where a moving top joint has one child whose position channels also move (some
  Bandai clips), the child is the root and the top joint is held at its median.
- Heading is the yaw of the root about the up axis (Y). The root's world rotation
  with its heading removed, its horizontal velocity expressed in the heading frame
  and the heading's rate of change make every frame independent of where the
  character stands and which way it faces.
- Velocities are forward differences, ``(p[t+1] - p[t]) / dt``, so integrating them
  back reproduces the trajectory exactly; the last frame repeats the one before.
- Position channels below the root are treated as constant (their median over the
  data), as are joints above it.

Lengths stay in the rig's units; ``FeatureSpec.units_to_m`` converts them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from motionode.bvh import (
    POSITION_CHANNELS,
    ROTATION_CHANNELS,
    Clip,
    Skeleton,
    channels_to_local,
    local_to_channels,
)
from motionode.kinematics import forward_kinematics
from motionode.rotations import axis_angle_matrix, matrix_to_sixd, sixd_to_matrix

logger = logging.getLogger(__name__)

__all__ = ["FeatureSpec", "FrameFeatures", "build_spec", "decode", "encode"]

UP = 1  # index of the up axis; every rig trained here is Y-up


@dataclass
class FeatureSpec:
    """How a skeleton's channels map to features; saved with every model.

    Attributes:
        skeleton: the rig, as a ``Skeleton.to_dict()`` description.
        root: index of the moving root joint.
        rot_joints: joints below the root whose rotations are features.
        const_channels: (C,) value of every channel that is held constant.
        forward_axis: local axis (0, 1, 2) of the root used to measure heading.
        units_to_m: metres per rig length unit.
        mean, std: (D,) feature normalisation statistics.
    """

    skeleton: dict
    root: int
    rot_joints: list[int]
    const_channels: list[float]
    forward_axis: int
    units_to_m: float
    mean: list[float]
    std: list[float]

    @property
    def dim(self) -> int:
        return 10 + 6 * len(self.rot_joints)

    def skel(self) -> Skeleton:
        """The rig as a Skeleton, built once (decoding a live stream asks per frame)."""
        sk = self.__dict__.get("_skeleton")
        if sk is None:
            sk = self.__dict__["_skeleton"] = Skeleton.from_dict(self.skeleton)
        return sk

    def constant_local(self) -> tuple[np.ndarray, np.ndarray]:
        """Local rotations (1, J, 3, 3) and translations (1, J, 3) of the constant
        channels, built once."""
        const = self.__dict__.get("_constant_local")
        if const is None:
            sk = self.skel()
            row = np.asarray(self.const_channels)[None]  # (1, C)
            const = self.__dict__["_constant_local"] = channels_to_local(sk, row)
        return const

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"feature spec: unknown keys {sorted(unknown)}")
        return cls(**data)

    def normalize(self, features: np.ndarray) -> np.ndarray:
        return (features - np.asarray(self.mean)) / np.asarray(self.std)

    def denormalize(self, features: np.ndarray) -> np.ndarray:
        return features * np.asarray(self.std) + np.asarray(self.mean)


@dataclass
class FrameFeatures:
    """Features of a clip plus what they leave out: where the root is and faces.

    Attributes:
        pose: (T, D) float64 features (not normalised).
        root_xz: (T, 2) float64 world root position on the ground plane.
        heading: (T,) float64 world heading, radians, unwrapped.
        times: (T,) float64 seconds.
    """

    pose: np.ndarray
    root_xz: np.ndarray
    heading: np.ndarray
    times: np.ndarray


def _yaw(angle: np.ndarray) -> np.ndarray:
    return axis_angle_matrix(UP, angle)


def _moving_root(skeleton: Skeleton, motions: list[np.ndarray]) -> int:
    """Walk down from ROOT past one-child joints that never change, or whose child's
    position channels change (features keep positions below the root constant)."""
    starts = skeleton.channel_starts()

    def changes(j: int, positions_only: bool) -> bool:
        cols = [
            starts[j] + k
            for k, c in enumerate(skeleton.channels[j])
            if not positions_only or c in POSITION_CHANNELS
        ]
        return any(np.ptp(m[:, cols], axis=0).max(initial=0.0) >= 1e-9 for m in motions)

    j = 0
    while True:
        kids = [c for c, p in enumerate(skeleton.parents) if p == j]
        if len(kids) != 1 or (changes(j, False) and not changes(kids[0], True)):
            return j
        j = kids[0]


def _ancestors(skeleton: Skeleton, joint: int) -> list[int]:
    out, p = [], int(skeleton.parents[joint])
    while p >= 0:
        out.append(p)
        p = int(skeleton.parents[p])
    return out


def build_spec(clips: list[Clip], units_to_m: float) -> FeatureSpec:
    """Derive the feature layout and normalisation statistics from training clips.

    Raises:
        ValueError: the clips do not share one skeleton.
    """
    if not clips:
        raise ValueError("clips: expected at least one training clip, got none")
    sk = clips[0].skeleton
    for c in clips[1:]:
        why = sk.rig_difference(c.skeleton)
        if why is not None:
            raise ValueError(
                f"clips: {c.source} has a different skeleton from "
                f"{clips[0].source}: {why}"
            )
    motions = [c.motion for c in clips]
    root = _moving_root(sk, motions)
    above = set(_ancestors(sk, root))
    rot_joints = [
        j
        for j in range(sk.num_joints)
        if j != root
        and j not in above
        and any(ch in ROTATION_CHANNELS for ch in sk.channels[j])
    ]
    const = np.median(np.concatenate(motions), axis=0)

    # Heading is measured on the root axis that stays most horizontal.
    world_rot = _root_world(sk, root, clips[0].motion)[1]
    tilt = [np.abs(world_rot[:, UP, a]).mean() for a in range(3)]
    forward_axis = int(np.argmin(tilt))

    spec = FeatureSpec(
        sk.to_dict(),
        root,
        rot_joints,
        const.tolist(),
        forward_axis,
        float(units_to_m),
        [],
        [],
    )
    feats = np.concatenate([encode(spec, c).pose for c in clips])
    spec.mean = feats.mean(axis=0).tolist()
    # A floor on std keeps constant features (dummy joints) from blowing up.
    spec.std = np.maximum(feats.std(axis=0), 1e-3).tolist()
    logger.info(
        "feature spec: root %s, %d rotating joints, %d dims",
        sk.names[root],
        len(rot_joints),
        spec.dim,
    )
    return spec


def _root_world(sk: Skeleton, root: int, motion: np.ndarray):
    local_rot, local_pos = channels_to_local(sk, motion)
    world_pos, world_rot = forward_kinematics(sk.parents, local_rot, local_pos)
    return world_pos[:, root], world_rot[:, root], local_rot


def encode(spec: FeatureSpec, clip: Clip) -> FrameFeatures:
    """Features (T, D) of a clip, with the root trajectory they leave out."""
    sk = spec.skel()
    root_pos, root_rot, local_rot = _root_world(sk, spec.root, clip.motion)
    times = clip.times
    num_frames = len(times)

    fwd = root_rot[:, :, spec.forward_axis]  # (T, 3) world direction of forward axis
    heading = np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 2]))
    rot_local = _yaw(-heading) @ root_rot  # (T, 3, 3) heading removed

    dt = np.diff(times)
    vel_world = np.diff(root_pos, axis=0) / dt[:, None]  # (T-1, 3)
    vel_head = np.einsum("tij,tj->ti", _yaw(-heading[:-1]), vel_world)
    turn = np.diff(heading) / dt
    if num_frames > 1:
        vel_head = np.concatenate([vel_head, vel_head[-1:]])
        turn = np.concatenate([turn, turn[-1:]])
    else:
        vel_head, turn = np.zeros((1, 3)), np.zeros(1)

    joint6d = matrix_to_sixd(local_rot[:, spec.rot_joints]).reshape(num_frames, -1)
    pose = np.concatenate(
        [
            root_pos[:, UP : UP + 1],
            vel_head[:, [0, 2]],
            turn[:, None],
            matrix_to_sixd(rot_local),
            joint6d,
        ],
        axis=1,
    )  # (T, D)
    return FrameFeatures(pose, root_pos[:, [0, 2]], heading, times)


def integrate_root(
    pose: np.ndarray, times: np.ndarray, root_xz0: np.ndarray, heading0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate root velocity and turn rate: (T, 2) positions, (T,) headings.

    Uses the same forward differences as :func:`encode`, so it inverts it exactly.
    """
    dt = np.diff(times)
    heading = heading0 + np.concatenate([[0.0], np.cumsum(pose[:-1, 3] * dt)])
    vel = np.zeros((len(times) - 1, 3))
    vel[:, [0, 2]] = pose[:-1, 1:3]
    step = np.einsum("tij,tj->ti", _yaw(heading[:-1]), vel) * dt[:, None]
    xz = np.asarray(root_xz0) + np.concatenate(
        [np.zeros((1, 2)), np.cumsum(step[:, [0, 2]], axis=0)]
    )
    return xz, heading


def pose_local(spec: FeatureSpec, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations of every joint from features: root (T, 3, 3) heading removed, and
    local rotations (T, J, 3, 3) with identity where a joint does not rotate."""
    num_frames = len(pose)
    sk_joints = len(spec.skeleton["names"])
    root_rot = sixd_to_matrix(pose[:, 4:10])
    local_rot = np.broadcast_to(np.eye(3), (num_frames, sk_joints, 3, 3)).copy()
    six = pose[:, 10:].reshape(num_frames, len(spec.rot_joints), 6)  # (T, K, 6)
    local_rot[:, spec.rot_joints] = sixd_to_matrix(six)
    return root_rot, local_rot


def decode(
    spec: FeatureSpec,
    pose: np.ndarray,
    root_xz: np.ndarray,
    heading: np.ndarray,
    previous: np.ndarray | None = None,
    continuous: bool = True,
) -> np.ndarray:
    """Channel rows (T, C) from features (T, D) and a root trajectory.

    Args:
        pose: (T, D) float features (not normalised).
        root_xz: (T, 2) world root position on the ground plane.
        heading: (T,) world heading, radians.
        previous: channel row (C,) the Euler angles continue from, if any.
        continuous: keep Euler angles continuous over the rows; if False, each row
            holds principal angles and depends on its own features only.
    """
    sk = spec.skel()
    num_frames = len(pose)
    root_rel, local_rot = pose_local(spec, pose)
    root_rot = _yaw(heading) @ root_rel  # (T, 3, 3)
    root_pos = np.stack([root_xz[:, 0], pose[:, 0], root_xz[:, 1]], axis=1)

    # Express the root in its parent's frame through the constant joints above it.
    const_rot, const_pos = spec.constant_local()
    above = _ancestors(sk, spec.root)
    if above:
        parent = above[0]
        par_pos, par_rot = forward_kinematics(sk.parents, const_rot, const_pos)
        inv = par_rot[0, parent].T
        root_pos = (root_pos - par_pos[0, parent]) @ inv.T
        root_rot = inv @ root_rot
    local_rot[:, spec.root] = root_rot
    local_pos = np.broadcast_to(const_pos, (num_frames, sk.num_joints, 3)).copy()
    local_pos[:, spec.root] = root_pos
    for j in above:
        local_rot[:, j] = const_rot[0, j]

    motion = local_to_channels(sk, local_rot, local_pos, previous, continuous)
    # Channels the features do not carry keep their constant value.
    starts = sk.channel_starts()
    for j, chans in enumerate(sk.channels):
        for k, ch in enumerate(chans):
            carried = j == spec.root or (
                j in spec.rot_joints and ch not in POSITION_CHANNELS
            )
            if not carried:
                motion[:, starts[j] + k] = spec.const_channels[starts[j] + k]
    return motion
