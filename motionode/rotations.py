"""Rotation helpers on numpy arrays.

Convention, used everywhere in motionode: rotation matrices act on column vectors,
the last two axes are (3, 3), and any leading axes broadcast. Euler angles follow
BVH: intrinsic rotations applied in the order the channels are listed, so the order
"ZYX" means ``R = Rz(a0) @ Ry(a1) @ Rx(a2)``. Angles are radians unless a name ends
in ``_deg``. The 6D form is the first two columns of the matrix, (..., 6).

Quaternions here are (..., 4) arrays ``(w, x, y, z)``, scalar first, multiplied by
Hamilton's rule; the unit quaternion ``(cos(a/2), sin(a/2) * u)`` is the rotation
by ``a`` about the unit axis ``u``, and ``q1 * q2`` is the rotation ``R1 @ R2``.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "EULER_ORDERS",
    "axis_angle_matrix",
    "canonical_quaternion_sign",
    "euler_to_matrix",
    "euler_to_quaternion",
    "euler_to_quaternion_rate",
    "matrix_to_euler",
    "matrix_to_sixd",
    "quaternion_multiply",
    "quaternion_to_matrix",
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


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton products ``a * b`` of quaternions (..., 4) ``(w, x, y, z)``; leading
    axes broadcast. The product of unit quaternions is the rotation ``Ra @ Rb``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def _axis_quaternions(order: str, angles: np.ndarray) -> list[np.ndarray]:
    """The three factors (..., 4) of an Euler triple (..., 3) radians: factor k
    is ``(cos(a_k/2), sin(a_k/2) e)`` with ``e`` the unit vector of ``order[k]``."""
    factors = []
    for k, axis in enumerate(order):
        half = angles[..., k] / 2.0
        q = np.zeros(half.shape + (4,))
        q[..., 0] = np.cos(half)
        q[..., 1 + _AXIS[axis]] = np.sin(half)
        factors.append(q)
    return factors


def euler_to_quaternion(angles: np.ndarray, order: str) -> np.ndarray:
    """Intrinsic Euler angles (..., 3) radians, in ``order``, to unit quaternions
    (..., 4) ``(w, x, y, z)`` of the same rotations as :func:`euler_to_matrix`:
    ``q = q(a0) * q(a1) * q(a2)`` about the axes of ``order``. Either sign of a
    quaternion is the same rotation; this one is the plain product (see
    :func:`canonical_quaternion_sign`)."""
    order = check_order(order)
    q0, q1, q2 = _axis_quaternions(order, np.asarray(angles, dtype=np.float64))
    return quaternion_multiply(quaternion_multiply(q0, q1), q2)


def euler_to_quaternion_rate(
    angles: np.ndarray, rates: np.ndarray, order: str
) -> np.ndarray:
    """Time derivatives (..., 4) of :func:`euler_to_quaternion` along a motion whose
    Euler angles (..., 3) radians change at ``rates`` (..., 3) radians per second.

    By the product rule, ``q' = q0' q1 q2 + q0 q1' q2 + q0 q1 q2'`` with
    ``qk' = (ak' / 2) * (-sin(ak/2), cos(ak/2) e)``: exact, no differences taken.
    """
    order = check_order(order)
    angles = np.asarray(angles, dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    factors = _axis_quaternions(order, angles)
    out = np.zeros(np.broadcast_shapes(angles.shape, rates.shape)[:-1] + (4,))
    for k, axis in enumerate(order):
        half = angles[..., k] / 2.0
        step = np.zeros(half.shape + (4,))  # d q_k / d a_k
        step[..., 0] = -0.5 * np.sin(half)
        step[..., 1 + _AXIS[axis]] = 0.5 * np.cos(half)
        parts = list(factors)
        parts[k] = step * rates[..., k, None]
        out = out + quaternion_multiply(
            quaternion_multiply(parts[0], parts[1]), parts[2]
        )
    return out


def canonical_quaternion_sign(quaternions: np.ndarray) -> np.ndarray:
    """(...,) +1 or -1: the sign that puts a quaternion (..., 4) ``(w, x, y, z)``
    in its canonical form, where ``w > 0``, or, if ``w == 0``, the first non-zero
    of ``x, y, z`` is positive. ``q`` and ``-q`` are one rotation and get one
    canonical form, so a canonical quaternion is a function of its rotation."""
    q = np.asarray(quaternions, dtype=np.float64)
    sign = np.ones(q.shape[:-1])
    decided = np.zeros(q.shape[:-1], dtype=bool)
    for i in range(4):
        here = ~decided & (q[..., i] != 0.0)
        sign[here] = np.sign(q[..., i][here])
        decided |= here
    return sign


def quaternion_to_matrix(quaternions: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) ``(w, x, y, z)`` to rotation matrices (..., 3, 3)
    acting on column vectors (the quaternion is normalised first)."""
    q = np.asarray(quaternions, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)
