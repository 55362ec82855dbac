"""Pose features to joint positions in torch, for position losses and metrics."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from motionode.bvh import channels_to_local
from motionode.features import FeatureSpec, _ancestors
from motionode.kinematics import forward_kinematics_torch

logger = logging.getLogger(__name__)

__all__ = ["FeatureFK", "sixd_to_matrix_torch"]


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
