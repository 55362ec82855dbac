"""Classical in-betweening, the baselines a continuous-time model has to beat.

Both fill in frames at ``target_times`` from frames seen at ``obs_times`` (seconds,
strictly increasing); targets outside the observed span are held at the nearest
end rather than extrapolated, so callers should keep targets inside it.

- :func:`slerp_features`: pose features as in :mod:`motionode.features`; every
  rotation (the root's with its heading removed, and each joint's local one) is
  slerped between the two observed frames around a target, the root height moves
  linearly. Joint positions then come from forward kinematics, so bones keep their
  lengths.
- :func:`cubic_spline`: any values (for example joint positions), each coordinate
  on its own natural cubic spline through the observed samples (second derivative
  zero at both ends), irregular spacing allowed. Splining positions does not keep
  bone lengths; :mod:`motionode.plausibility` measures by how much.
"""

from __future__ import annotations

import logging

import numpy as np

from motionode.preview import quat_from_matrix, quat_slerp, quat_to_matrix
from motionode.rotations import matrix_to_sixd, sixd_to_matrix

logger = logging.getLogger(__name__)

__all__ = ["bracket", "cubic_spline", "slerp_features"]


def _check_times(obs_times: np.ndarray) -> np.ndarray:
    t = np.asarray(obs_times, dtype=np.float64)
    if t.ndim != 1 or len(t) < 2 or not (np.diff(t) > 0).all():
        raise ValueError(
            f"obs_times: expected at least 2 strictly increasing times, got {t!r}"
        )
    return t


def bracket(
    obs_times: np.ndarray, target_times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each target, the index ``a`` of the observed time at or before it (the
    last interval for the last time) and its fraction ``u`` in [0, 1] of the way to
    observation ``a + 1``; both (N,)."""
    t = _check_times(obs_times)
    x = np.clip(np.asarray(target_times, dtype=np.float64), t[0], t[-1])
    a = np.clip(np.searchsorted(t, x, side="right") - 1, 0, len(t) - 2)
    u = (x - t[a]) / (t[a + 1] - t[a])
    return a, u


def slerp_features(
    pose: np.ndarray, obs_times: np.ndarray, target_times: np.ndarray
) -> np.ndarray:
    """Pose features at ``target_times`` by slerp of rotations and linear height.

    Args:
        pose: (K, D) float features (not normalised) of the observed frames.
        obs_times: (K,) float64 seconds, strictly increasing.
        target_times: (N,) float64 seconds.

    Returns:
        (N, D) features; root velocity and turn rate are interpolated linearly.
        A target at an observed time gets that frame exactly.
    """
    pose = np.asarray(pose, dtype=np.float64)
    K, D = pose.shape
    a, u = bracket(obs_times, target_times)
    out = (1 - u[:, None]) * pose[a] + u[:, None] * pose[a + 1]  # (N, D)

    six = pose[:, 4:].reshape(K, (D - 4) // 6, 6)  # (K, R, 6): root, then joints
    quat = quat_from_matrix(sixd_to_matrix(six))  # (K, R, 4)
    uu = np.broadcast_to(u[:, None], quat[a].shape[:2])  # (N, R)
    rot = quat_to_matrix(quat_slerp(quat[a], quat[a + 1], uu))  # (N, R, 3, 3)
    out[:, 4:] = matrix_to_sixd(rot).reshape(len(u), -1)

    # Targets on observed frames take them as they are (the quaternion round trip
    # would differ by rounding).
    out[u == 0] = pose[a[u == 0]]
    out[u == 1] = pose[a[u == 1] + 1]
    return out


def cubic_spline(
    values: np.ndarray, obs_times: np.ndarray, target_times: np.ndarray
) -> np.ndarray:
    """Natural cubic spline of every coordinate of ``values`` (K, ...) observed at
    ``obs_times`` (K,), evaluated at ``target_times`` (N,): (N, ...) values.

    With two observations the spline is the straight line between them.
    """
    t = _check_times(obs_times)
    y = np.asarray(values, dtype=np.float64)
    K = len(t)
    flat = y.reshape(K, -1)  # (K, C)
    h = np.diff(t)  # (K - 1,)

    # Second derivatives M at the knots: M[0] = M[-1] = 0 and, inside,
    # h[i-1] M[i-1] + 2 (h[i-1] + h[i]) M[i] + h[i] M[i+1] = 6 (slope[i] - slope[i-1]).
    slope = np.diff(flat, axis=0) / h[:, None]  # (K - 1, C)
    M = np.zeros_like(flat)
    if K > 2:
        n = K - 2
        A = np.zeros((n, n))
        idx = np.arange(n)
        A[idx, idx] = 2 * (h[:-1] + h[1:])
        A[idx[1:], idx[:-1]] = h[1:-1]
        A[idx[:-1], idx[1:]] = h[1:-1]
        M[1:-1] = np.linalg.solve(A, 6 * np.diff(slope, axis=0))

    a, u = bracket(t, target_times)
    ha = h[a][:, None]  # (N, 1)
    uu = u[:, None]
    y0, y1, m0, m1 = flat[a], flat[a + 1], M[a], M[a + 1]
    out = (
        (1 - uu) * y0
        + uu * y1
        + ha**2 / 6 * (((1 - uu) ** 3 - (1 - uu)) * m0 + (uu**3 - uu) * m1)
    )  # (N, C)
    return out.reshape((len(u),) + y.shape[1:])
