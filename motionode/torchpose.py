"""Pose features to joint positions and to BVH channels in torch: for position losses
and metrics, and for exact time derivatives of generated channels."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from motionode.bvh import POSITION_CHANNELS, ROTATION_CHANNELS, channels_to_local
from motionode.features import FeatureSpec, _ancestors
from motionode.kinematics import forward_kinematics, forward_kinematics_torch
from motionode.rotations import check_order

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureChannels",
    "FeatureFK",
    "matrix_to_euler_torch",
    "sixd_to_matrix_torch",
]


def sixd_to_matrix_torch(sixd: torch.Tensor) -> torch.Tensor:
    """6D form (..., 6) to rotation matrices (..., 3, 3) by Gram-Schmidt."""
    a, b = sixd[..., :3], sixd[..., 3:]
    x = nn.functional.normalize(a, dim=-1)
    y = nn.functional.normalize(b - (x * b).sum(-1, keepdim=True) * x, dim=-1)
    z = torch.cross(x, y, dim=-1)
    return torch.stack([x, y, z], dim=-1)


class FeatureFK(nn.Module):
    """Normalised features (..., D) to joint positions (..., J, 3) in metres.

    Positions are in the character's heading frame: the root is above the origin and
    faces a fixed direction, so the loss sees pose, not where the clip wandered.
    Joints above the moving root are dropped to the origin.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        sk = spec.skel()
        const = np.asarray(spec.const_channels)[None]
        _, const_pos = channels_to_local(sk, const)  # (1, J, 3)
        local_pos = const_pos[0] * spec.units_to_m
        for j in _ancestors(sk, spec.root):
            local_pos[j] = 0.0
        self.parents = [int(p) for p in sk.parents]
        self.root = spec.root
        self.rot_joints = list(spec.rot_joints)
        self.units_to_m = spec.units_to_m
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32))
        self.register_buffer("local_pos", torch.tensor(local_pos, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lead = features.shape[:-1]
        J = len(self.parents)
        x = features * self.std + self.mean  # (..., D) in rig units
        six = x[..., 10:].reshape(*lead, len(self.rot_joints), 6)  # (..., K, 6)
        rots = sixd_to_matrix_torch(six)  # (..., K, 3, 3)
        eye = torch.eye(3, dtype=x.dtype, device=x.device).expand(*lead, 3, 3)
        by_joint = {j: rots[..., k, :, :] for k, j in enumerate(self.rot_joints)}
        by_joint[self.root] = sixd_to_matrix_torch(x[..., 4:10])
        local_rot = torch.stack([by_joint.get(j, eye) for j in range(J)], dim=-3)

        local_pos = (
            self.local_pos.to(x.dtype).expand(*lead, J, 3).clone()
        )  # (..., J, 3)
        height = x[..., 0] * self.units_to_m
        local_pos[..., self.root, :] = 0.0
        local_pos[..., self.root, 1] = height
        world_pos, _ = forward_kinematics_torch(self.parents, local_rot, local_pos)
        return world_pos  # (..., J, 3)


def _axis_matrix_torch(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """Rotation (..., 3, 3) by ``angle`` (...,) radians about coordinate ``axis``."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    rows = {
        0: [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        1: [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        2: [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def matrix_to_euler_torch(matrix: torch.Tensor, order: str) -> torch.Tensor:
    """Matrices (..., 3, 3) to principal intrinsic Euler angles (..., 3) radians, as
    ``motionode.rotations.matrix_to_euler`` computes them away from gimbal lock
    (where the angles, and so their derivatives, are not unique)."""
    order = check_order(order)
    i, j, k = ("XYZ".index(a) for a in order)
    s = 1.0 if (j - i) % 3 == 1 else -1.0
    b = torch.asin(torch.clamp(s * matrix[..., i, k], -1.0, 1.0))
    a = torch.atan2(-s * matrix[..., j, k], matrix[..., k, k])
    c = torch.atan2(-s * matrix[..., i, j], matrix[..., i, i])
    return torch.stack([a, b, c], dim=-1)


class FeatureChannels:
    """Features (D,) and root state (3,) to a channel row (C,), as
    ``motionode.features.decode`` with principal angles, in differentiable torch.

    The root state is the ground-plane position (x, z) and heading, radians.
    Channels the features do not carry keep their constant values.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        sk = spec.skel()
        f64 = torch.float64
        self.root = spec.root
        self.rot_joints = list(spec.rot_joints)
        self.const = torch.tensor(spec.const_channels, dtype=f64)  # (C,)

        # The constant joints above the root, folded into one transform.
        const_rot, const_pos = spec.constant_local()
        above = _ancestors(sk, spec.root)
        inv, origin = np.eye(3), np.zeros(3)
        if above:
            par_pos, par_rot = forward_kinematics(sk.parents, const_rot, const_pos)
            inv, origin = par_rot[0, above[0]].T, par_pos[0, above[0]]
        self.inv = torch.tensor(inv, dtype=f64)
        self.origin = torch.tensor(origin, dtype=f64)

        # Where each carried value goes: root positions, then Euler angles.
        starts = sk.channel_starts()
        self.pos_index, self.pos_axis = [], []
        for k, name in enumerate(sk.channels[spec.root]):
            if name in POSITION_CHANNELS:
                self.pos_index.append(int(starts[spec.root] + k))
                self.pos_axis.append("XYZ".index(name[0]))
        self.groups = []  # (order, joints, channel indices, angle slots)
        for order in sorted({sk.rotation_order(j) for j in range(sk.num_joints)}):
            joints, index, slot = [], [], []
            for j in [spec.root, *self.rot_joints]:
                if sk.rotation_order(j) != order:
                    continue
                for k, name in enumerate(sk.channels[j]):
                    if name in ROTATION_CHANNELS:
                        index.append(int(starts[j] + k))
                        slot.append(3 * len(joints) + order.index(name[0]))
                joints.append(j)
            if joints:
                self.groups.append((order, joints, index, slot))

    def __call__(self, pose: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
        K = len(self.rot_joints)
        yaw = _axis_matrix_torch(1, root[2])  # (3, 3) heading about +Y
        root_rot = self.inv @ yaw @ sixd_to_matrix_torch(pose[4:10])  # (3, 3)
        root_pos = self.inv @ (torch.stack([root[0], pose[0], root[1]]) - self.origin)
        rots = sixd_to_matrix_torch(pose[10:].reshape(K, 6))  # (K, 3, 3)
        by_joint = {j: rots[n] for n, j in enumerate(self.rot_joints)}
        by_joint[self.root] = root_rot

        index, values = list(self.pos_index), [root_pos[self.pos_axis]]
        for order, joints, group_index, slot in self.groups:
            mats = torch.stack([by_joint[j] for j in joints])  # (G, 3, 3)
            angles = matrix_to_euler_torch(mats, order).reshape(-1)  # (3G,)
            index += group_index
            values.append(torch.rad2deg(angles[slot]))
        where = torch.tensor(index, dtype=torch.long)
        return self.const.index_put((where,), torch.cat(values))  # (C,)
