"""Forward kinematics over a parent-index skeleton, in numpy and batched torch."""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["forward_kinematics", "forward_kinematics_torch"]


def forward_kinematics(
    parents: np.ndarray, local_rot: np.ndarray, local_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World positions and rotations from local transforms.

    Args:
        parents: (J,) int, parent index of each joint, -1 for the root; parents come
            before their children.
        local_rot: (..., J, 3, 3) float local rotation matrices.
        local_pos: (..., J, 3) float local translations (parent frame).

    Returns:
        world_pos (..., J, 3) and world_rot (..., J, 3, 3).
    """
    world_pos = np.empty(np.broadcast_shapes(local_pos.shape, local_rot.shape[:-1]))
    world_rot = np.empty(np.broadcast_shapes(local_rot.shape, local_pos.shape + (3,)))
    for j, p in enumerate(parents):
        if p < 0:
            world_pos[..., j, :] = local_pos[..., j, :]
            world_rot[..., j, :, :] = local_rot[..., j, :, :]
        else:
            world_pos[..., j, :] = world_pos[..., p, :] + np.einsum(
                "...ij,...j->...i", world_rot[..., p, :, :], local_pos[..., j, :]
            )
            world_rot[..., j, :, :] = world_rot[..., p, :, :] @ local_rot[..., j, :, :]
    return world_pos, world_rot


def forward_kinematics_torch(
    parents: list[int], local_rot: torch.Tensor, local_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched, differentiable forward kinematics; same contract as the numpy one.

    Args:
        local_rot: (..., J, 3, 3) local rotation matrices.
        local_pos: (..., J, 3) local translations.

    Returns:
        world_pos (..., J, 3) and world_rot (..., J, 3, 3).
    """
    pos: list[torch.Tensor] = []
    rot: list[torch.Tensor] = []
    for j, p in enumerate(parents):
        if p < 0:
            pos.append(local_pos[..., j, :])
            rot.append(local_rot[..., j, :, :])
        else:
            pos.append(pos[p] + (rot[p] @ local_pos[..., j, :, None])[..., 0])
            rot.append(rot[p] @ local_rot[..., j, :, :])
    return torch.stack(pos, dim=-2), torch.stack(rot, dim=-3)
