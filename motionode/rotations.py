"""Rotation helpers on numpy arrays.

Convention, used everywhere in motionode: rotation matrices act on column vectors,
the last two axes are (3, 3), and any leading axes broadcast. Euler angles follow
BVH: intrinsic rotations applied in the order the channels are listed, so the order
"ZYX" means ``R = Rz(a0) @ Ry(a1) @ Rx(a2)``. Angles are radians unless a name ends
in ``_deg``. The 6D form is the first two columns of the matrix, (..., 6).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "EULER_ORDERS",
    "axis_angle_matrix",
    "euler_to_matrix",
    "matrix_to_euler",
    "matrix_to_sixd",
    "sixd_to_matrix",
    "unwrap_euler",
]

EULER_ORDERS = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")
_AXIS = {"X": 0, "Y": 1, "Z": 2}


def check_order(order: str) -> str:
    """Return ``order`` upper-cased, or raise ValueError listing the valid orders."""
    upper = order.upper()
    if upper not in EULER_ORDERS:
        raise ValueError(
            f"rotation order: expected one of {', '.join(EULER_ORDERS)}, got {order!r}"
        )
    return upper


def axis_angle_matrix(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotation by ``angle`` (...,) radians about coordinate ``axis`` (0, 1, 2)."""
    angle = np.asarray(angle, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros(angle.shape + (3, 3))
    i, j = (axis + 1) % 3, (axis + 2) % 3
    out[..., axis, axis] = 1.0
    out[..., i, i] = c
    out[..., j, j] = c
    out[..., i, j] = -s
    out[..., j, i] = s
    return out


def euler_to_matrix(angles: np.ndarray, order: str) -> np.ndarray:
    """Intrinsic Euler angles (..., 3) radians, in ``order``, to matrices
    (..., 3, 3)."""
    order = check_order(order)
    angles = np.asarray(angles, dtype=np.float64)
    out = axis_angle_matrix(_AXIS[order[0]], angles[..., 0])
    for k in (1, 2):
        out = out @ axis_angle_matrix(_AXIS[order[k]], angles[..., k])
    return out


def _parity(order: str) -> float:
    i, j = _AXIS[order[0]], _AXIS[order[1]]
    return 1.0 if (j - i) % 3 == 1 else -1.0


def matrix_to_euler(matrix: np.ndarray, order: str) -> np.ndarray:
    """Matrices (..., 3, 3) to intrinsic Euler angles (..., 3) radians in ``order``.

    The middle angle lies in [-pi/2, pi/2]. At gimbal lock (middle angle at +-90
    degrees) the third angle is set to zero and the first absorbs the rotation, so the
    angles still give back the same matrix.
    """
    order = check_order(order)
    i, j, k = (_AXIS[a] for a in order)
    s = _parity(order)
    m = np.asarray(matrix, dtype=np.float64)

    sin_b = np.clip(s * m[..., i, k], -1.0, 1.0)
    b = np.arcsin(sin_b)
    cos_b = np.sqrt(m[..., i, i] ** 2 + m[..., i, j] ** 2)
    a = np.arctan2(-s * m[..., j, k], m[..., k, k])
    c = np.arctan2(-s * m[..., i, j], m[..., i, i])

    # Near gimbal lock the first and third axes coincide: put all of it in the first.
    locked = cos_b < 1e-9
    if np.any(locked):
        a_locked = np.arctan2(s * m[..., k, j], m[..., j, j])
        a = np.where(locked, a_locked, a)
        c = np.where(locked, 0.0, c)
    return np.stack([a, b, c], axis=-1)


def unwrap_euler(angles: np.ndarray, order: str) -> np.ndarray:
    """Make a sequence of Euler triples (T, 3) radians continuous over time.

    Every rotation has two Euler triples (plus multiples of 2 pi on each angle); for
    each frame this picks the one nearest the previous frame, so a writer never
    emits a 360-degree jump. The rotations themselves are unchanged.
    """
    check_order(order)
    angles = np.array(angles, dtype=np.float64)
    if angles.ndim != 2 or angles.shape[1] != 3:
        raise ValueError(f"angles: expected shape (T, 3), got {angles.shape}")
    two_pi = 2.0 * np.pi
    for t in range(1, len(angles)):
        prev = angles[t - 1]
        a, b, c = angles[t]
        best, best_dist = None, np.inf
        for cand in ((a, b, c), (a + np.pi, np.pi - b, c + np.pi)):
            cand = np.asarray(cand)
            cand = cand - two_pi * np.round((cand - prev) / two_pi)
            dist = float(np.sum((cand - prev) ** 2))
            if dist < best_dist:
                best, best_dist = cand, dist
        angles[t] = best
    return angles


def matrix_to_sixd(matrix: np.ndarray) -> np.ndarray:
    """Matrices (..., 3, 3) to the 6D form (..., 6): first column, then second."""
    m = np.asarray(matrix)
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def sixd_to_matrix(sixd: np.ndarray) -> np.ndarray:
    """6D form (..., 6) to rotation matrices (..., 3, 3) by Gram-Schmidt."""
    sixd = np.asarray(sixd, dtype=np.float64)
    a, b = sixd[..., :3], sixd[..., 3:]
    x = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b - np.sum(x * b, axis=-1, keepdims=True) * x
    y = b / np.linalg.norm(b, axis=-1, keepdims=True)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=-1)
