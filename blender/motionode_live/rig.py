"""Skeleton arithmetic: poses to joint transforms, and joint transforms to bones.

Plain numpy, no ``bpy``, so it can be checked outside Blender.

Conventions, stated once:

- Rotation matrices act on column vectors; transforms are (..., 4, 4) with the
  translation in the last column.
- A rig (PROTOCOL.md, section 4) is Y-up and right-handed; motionode's rigs face
  +Z at heading zero, their left hand at +X. Blender is Z-up and right-handed, in
  metres, with characters facing -Y. ``RIG_TO_BLENDER`` takes rig coordinates to
  Blender's, ``(x, y, z) -> (x, -z, y)``, a rotation of +90 degrees about X: the
  mapping of Blender's own BVH importer with its default axes. Points map as
  ``k * M @ p`` with ``k = units_to_m`` and rotations as ``M @ R @ M.T``; forward
  kinematics commutes with that, since M is a rotation. Up stays up, the character
  faces where it faced, and left stays left.
- The motion is placed in the armature object's space: the object's transform
  moves the whole character.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .wire import POSITIONS, SkeletonDesc

logger = logging.getLogger(__name__)

__all__ = [
    "RIG_TO_BLENDER",
    "BoneTarget",
    "blender_joints",
    "euler_matrices",
    "forward_kinematics",
    "local_transforms",
    "rest_layout",
    "solve_basis",
]

RIG_TO_BLENDER = np.array(
    [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
)  # (3, 3): Y-up right-handed rig to Blender's Z-up
MIN_BONE_M = 1e-3  # Blender drops shorter bones; shorter tails get a default length


def _axis_rotations(axis: str, angles_rad: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations by ``angles_rad`` (...) about axis "X", "Y" or "Z"."""
    c, s = np.cos(angles_rad), np.sin(angles_rad)
    one, zero = np.ones_like(c), np.zeros_like(c)
    if axis == "X":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "Y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def euler_matrices(angles_deg: np.ndarray, order: str) -> np.ndarray:
    """Intrinsic Euler rotations ``R_A1(a1) @ R_A2(a2) @ R_A3(a3)``.

    Args:
        angles_deg: (..., 3) float angles in degrees, in the order of ``order``.
        order: the three axes, e.g. "ZXY".

    Returns:
        (..., 3, 3) float64 rotation matrices.
    """
    rad = np.radians(np.asarray(angles_deg, dtype=np.float64))
    out = _axis_rotations(order[0], rad[..., 0])
    for k in (1, 2):
        out = out @ _axis_rotations(order[k], rad[..., k])
    return out


def local_transforms(desc: SkeletonDesc, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Local rotations and translations of every joint for poses ``rows``.

    Args:
        rows: (T, C) float channel values, in the description's channel order.

    Returns:
        local_rot (T, J, 3, 3) float64 and local_pos (T, J, 3) float64 in rig
        units: each joint's offset with its position channels replacing the
        matching components.
    """
    rows = np.asarray(rows, dtype=np.float64)
    num_frames, num_joints = rows.shape[0], desc.num_joints
    local_pos = np.broadcast_to(desc.offsets, (num_frames, num_joints, 3)).copy()
    local_rot = np.empty((num_frames, num_joints, 3, 3))
    for j, chans in enumerate(desc.channels):
        start = int(desc.channel_starts[j])
        angles = np.zeros((num_frames, 3))  # (T, 3) in the joint's rotation order
        order = desc.rotation_orders[j]
        for k, name in enumerate(chans):
            if name in POSITIONS:
                local_pos[:, j, POSITIONS.index(name)] = rows[:, start + k]
            else:
                angles[:, order.index(name[0])] = rows[:, start + k]
        local_rot[:, j] = euler_matrices(angles, order)
    return local_rot, local_pos


def forward_kinematics(
    parents: np.ndarray, local_rot: np.ndarray, local_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World rotations (T, J, 3, 3) and positions (T, J, 3) from local ones.

    ``parents`` (J,) int lists every parent before its children, -1 for the root.
    """
    world_rot = np.empty_like(local_rot)
    world_pos = np.empty_like(local_pos)
    for j, p in enumerate(parents):
        if p < 0:
            world_rot[:, j], world_pos[:, j] = local_rot[:, j], local_pos[:, j]
            continue
        world_rot[:, j] = world_rot[:, p] @ local_rot[:, j]
        world_pos[:, j] = world_pos[:, p] + np.einsum(
            "tab,tb->ta", world_rot[:, p], local_pos[:, j]
        )
    return world_rot, world_pos


def blender_joints(
    desc: SkeletonDesc, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Joint transforms of poses ``rows`` (T, C) in Blender's axes and metres.

    Returns:
        world_rot (T, J, 3, 3) float64, ``M @ W @ M.T``, and world_pos (T, J, 3)
        float64, ``units_to_m * M @ p``, with M = ``RIG_TO_BLENDER``.
    """
    local_rot, local_pos = local_transforms(desc, rows)
    world_rot, world_pos = forward_kinematics(desc.parents, local_rot, local_pos)
    m = RIG_TO_BLENDER
    world_rot = m @ world_rot @ m.T  # (T, J, 3, 3)
    world_pos = desc.units_to_m * world_pos @ m.T  # (T, J, 3)
    return world_rot, world_pos


def rest_layout(
    desc: SkeletonDesc, reference: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bone heads and tails (J, 3) float64, Blender metres, for the rest pose.

    Heads are where the joints are with every rotation at zero. Their local
    translations are the offsets, or with a ``reference`` pose (C,) that pose's
    position channels in place of the offsets they replace: in a rig whose every
    joint has position channels, as in motion capture exported with them, the
    offsets may hold wherever the recording began, metres away from the body. The
    root keeps its offset and the root's children only the reference's height, so
    the rig stands over the origin.

    A tail points at the mean of the joint's children, else along its longest end
    site, else on along its parent bone; bones shorter than a millimetre get a
    default length. Tails only shape the display: poses do not depend on them.
    """
    num_joints = desc.num_joints
    local = desc.offsets.copy()  # (J, 3) rig units
    if reference is not None:
        _, posed = local_transforms(desc, np.asarray(reference).reshape(1, -1))
        root = desc.parents < 0
        local[~root] = posed[0, ~root]
        local[root[desc.parents] & ~root, 0::2] = 0.0  # rig X and Z: the floor
    rest = np.zeros((num_joints, 3))
    for j, p in enumerate(desc.parents):
        rest[j] = local[j] + (rest[p] if p >= 0 else 0.0)
    heads = desc.units_to_m * rest @ RIG_TO_BLENDER.T  # (J, 3)
    ends = desc.units_to_m * desc.end_offsets @ RIG_TO_BLENDER.T  # (E, 3)

    lengths = [np.linalg.norm(heads[j] - heads[p]) for j, p in enumerate(desc.parents)]
    lengths = [x for x in lengths if x > MIN_BONE_M]
    default = max(0.05, 0.5 * float(np.median(lengths))) if lengths else 0.1
    tails = np.zeros_like(heads)
    for j in range(num_joints):
        kids = np.flatnonzero(desc.parents == j)
        direction = heads[kids].mean(axis=0) - heads[j] if len(kids) else np.zeros(3)
        if np.linalg.norm(direction) <= MIN_BONE_M:
            tips = [ends[e] for e in np.flatnonzero(desc.end_parents == j)]
            if tips:
                direction = max(tips, key=np.linalg.norm)
        if np.linalg.norm(direction) <= MIN_BONE_M:
            p = desc.parents[j]
            along = heads[j] - heads[p] if p >= 0 else np.zeros(3)
            if np.linalg.norm(along) <= MIN_BONE_M:
                along = np.array([0.0, 0.0, 1.0])
            direction = along / np.linalg.norm(along) * default
        tails[j] = heads[j] + direction
    return heads, tails


@dataclass
class BoneTarget:
    """An armature as the pose solver sees it.

    Attributes:
        parents: (B,) int, each bone's parent, -1 for none; any order.
        rest: (B, 4, 4) float, each bone's rest matrix in armature space
            (Blender's ``Bone.matrix_local``), rigid.
        joints: (B,) int, the joint driving each bone, -1 for none.
        moves: (B,) bool, whether a driven bone's head follows its joint's
            position (joints with position channels); other heads follow their
            parents.
        basis: (B, 4, 4) float, current basis of each undriven bone, which the
            solver keeps.
    """

    parents: np.ndarray
    rest: np.ndarray
    joints: np.ndarray
    moves: np.ndarray
    basis: np.ndarray

    def order(self) -> list[int]:
        """Bone indices with every parent before its children."""
        done: list[int] = []
        seen: set[int] = set()
        for b in range(len(self.parents)):
            chain = []
            while b >= 0 and b not in seen:
                chain.append(b)
                b = int(self.parents[b])
            for c in reversed(chain):
                seen.add(c)
                done.append(c)
        return done


def _rigid_inverse(mat: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4)."""
    out = np.zeros_like(mat)
    rot_t = np.swapaxes(mat[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ab,...b->...a", rot_t, mat[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def solve_basis(
    target: BoneTarget, world_rot: np.ndarray, world_pos: np.ndarray
) -> np.ndarray:
    """Basis matrices (T, B, 4, 4) that pose ``target`` like the joints.

    A driven bone gets the armature-space rotation ``W @ R_rest``: its rest
    orientation carried along by its joint's world rotation, which equals the
    joint's local rotation seen in the bone's rest frame when the parent is driven
    too. Its head goes to its joint's position if ``moves``, else where its parent
    takes it (location 0). Bones are assumed to inherit rotation and scale and to
    use local location (Blender's defaults).

    Args:
        world_rot: (T, J, 3, 3) joint rotations in armature space.
        world_pos: (T, J, 3) joint positions in armature space, metres.
    """
    num_frames, num_bones = world_rot.shape[0], len(target.parents)
    rest = np.asarray(target.rest, dtype=np.float64)
    basis = np.broadcast_to(target.basis, (num_frames, num_bones, 4, 4)).copy()
    pose = np.zeros((num_frames, num_bones, 4, 4))
    for b in target.order():
        p, j = int(target.parents[b]), int(target.joints[b])
        local_rest = rest[b] if p < 0 else _rigid_inverse(rest[p]) @ rest[b]
        chain = local_rest if p < 0 else pose[:, p] @ local_rest  # (T, 4, 4)
        chain = np.broadcast_to(chain, (num_frames, 4, 4))
        if j >= 0:
            want = np.zeros((num_frames, 4, 4))
            want[:, :3, :3] = world_rot[:, j] @ rest[b, :3, :3]
            want[:, :3, 3] = world_pos[:, j] if target.moves[b] else chain[:, :3, 3]
            want[:, 3, 3] = 1.0
            basis[:, b] = np.linalg.inv(chain) @ want
            if not target.moves[b]:
                basis[:, b, :3, 3] = 0.0
        pose[:, b] = chain @ basis[:, b]
    return basis
