"""Robot motion previews: a motion at a control rate, exported, checked and drawn.

A :class:`Trajectory` is a motion sampled at the times ``k / rate`` (k = 0, 1, ...)
of a robot controller:

- from a model stream, every pose is the model's own pose at exactly that time
  (:meth:`PoseStream.channels_at`), never an interpolation of other frames; joint
  angular velocities are central differences of the model over ``dt`` (1e-4 s by
  default) around each time, which the model allows because its motion is defined
  at every instant (at t = 0 a one-sided difference of the same order);
- from a BVH clip, times that fall on frames take those frames; other rates are made
  by slerp of each joint's local rotation and linear interpolation of positions
  between the two frames around the time; velocities are central differences over
  the clip's frames, interpolated linearly between them.

Conventions: lengths in metres (rig units times ``units_to_m``), world frame of the
rig with Y up, the *root* is the base joint of the body (the pelvis of a floating
base: the first joint below any static reference joints), its orientation a unit
quaternion ``(w, x, y, z)``, w first, kept sign-continuous over time. Joint angles
are each joint's BVH rotation channels (intrinsic Euler angles in the joint's own
channel order) in radians, continuous over time; their velocities are the time
derivatives of those angles. Angular accelerations are central differences of the
velocities over the control grid, so they depend on the rate.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from motionode.bvh import (
    ROTATION_CHANNELS,
    Clip,
    Skeleton,
    channels_to_local,
    local_to_channels,
)
from motionode.feasibility import (
    Limits,
    check_motion,
    find_floor,
    foot_joints,
)
from motionode.kinematics import forward_kinematics
from motionode.meshes import bone_segments, build_bones, pose_scene, write_glb
from motionode.rotations import unwrap_euler

if TYPE_CHECKING:
    from motionode.generate import PoseStream

logger = logging.getLogger(__name__)

__all__ = [
    "Trajectory",
    "base_joint",
    "control_times",
    "pose_samples",
    "quat_from_matrix",
    "quat_slerp",
    "quat_to_matrix",
    "sample_clip",
    "sample_stream",
    "trajectory_columns",
    "write_atomic",
    "write_csv",
    "write_npz",
    "write_preview",
]

_GRID_EPS = 1e-9  # a time within this many frames of a frame is that frame


# ---------------------------------------------------------------------------- quats


def quat_from_matrix(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) to unit quaternions (..., 4), w first, w >= 0."""
    m = np.asarray(matrix, dtype=np.float64)
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    sq = [1 + trace] + [1 + 2 * m[..., k, k] - trace for k in range(3)]
    wx, wy, wz = (
        m[..., 2, 1] - m[..., 1, 2],
        m[..., 0, 2] - m[..., 2, 0],
        m[..., 1, 0] - m[..., 0, 1],
    )
    xy, xz, yz = (
        m[..., 0, 1] + m[..., 1, 0],
        m[..., 0, 2] + m[..., 2, 0],
        m[..., 1, 2] + m[..., 2, 1],
    )
    outer = np.stack(
        [
            np.stack([sq[0], wx, wy, wz], -1),
            np.stack([wx, sq[1], xy, xz], -1),
            np.stack([wy, xy, sq[2], yz], -1),
            np.stack([wz, xz, yz, sq[3]], -1),
        ],
        -2,
    )  # (..., 4, 4) = 4 q q^T
    # Each row is q scaled by one of its components; the row of the largest one
    # divides by nothing small, so it is exact to rounding for any rotation.
    pivot = np.argmax(np.stack(sq, -1), -1)
    q = np.take_along_axis(outer, pivot[..., None, None], -2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4), w first (normalised here), to matrices (..., 3, 3)."""
    q = np.asarray(quat, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack(
        [
            np.stack(
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1
            ),
            np.stack(
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1
            ),
            np.stack(
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1
            ),
        ],
        -2,
    )


def quat_slerp(q0: np.ndarray, q1: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Shortest-arc interpolation of unit quaternions (..., 4) at fractions u (...)."""
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    u = np.asarray(u, np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    theta = np.arccos(np.clip(np.abs(dot), 0.0, 1.0))
    sin = np.sin(theta)
    near = sin < 1e-9  # (almost) the same rotation: the straight line is exact enough
    safe = np.where(near, 1.0, sin)
    w0 = np.where(near, 1 - u, np.sin((1 - u) * theta) / safe)
    w1 = np.where(near, u, np.sin(u * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _continuous(quat: np.ndarray) -> np.ndarray:
    """Flip signs along axis 0 of (T, 4) so neighbours have a non-negative dot."""
    dots = np.sum(quat[1:] * quat[:-1], axis=-1)
    signs = np.cumprod(np.concatenate([[1.0], np.where(dots < 0, -1.0, 1.0)]))
    return quat * signs[:, None]


# ---------------------------------------------------------------------- trajectory


@dataclass
class Trajectory:
    """A motion at a control rate.

    Attributes:
        skeleton: the rig.
        times: (T,) float64 seconds, ``k / rate``.
        rows: (T, C) float64 BVH channel rows (rig units, degrees), Euler angles
            continuous over time.
        angular_vel: (T, A) float64 rad/s, time derivative of each rotation channel
            (order of :attr:`angle_channels`).
        world_pos: (T, J, 3) float64 joint positions, metres, Y up.
        world_rot: (T, J, 3, 3) float64 joint world rotations.
        world_vel: (T, J, 3) float64 joint velocities, m/s.
        base: index of the root joint of the body.
        units_to_m: metres per rig unit.
        rate: samples per second.
        source: where the motion came from.
        sampling: how poses were obtained, for the export header.
        velocity: how velocities were obtained, for the export header.
    """

    skeleton: Skeleton
    times: np.ndarray
    rows: np.ndarray
    angular_vel: np.ndarray
    world_pos: np.ndarray
    world_rot: np.ndarray
    world_vel: np.ndarray
    base: int
    units_to_m: float
    rate: float
    source: str
    sampling: str
    velocity: str

    @property
    def angle_channels(self) -> list[tuple[int, int]]:
        """(joint, column in a row) of every rotation channel, in row order."""
        return _angle_channels(self.skeleton)

    @property
    def angles(self) -> np.ndarray:
        """(T, A) float64 joint angles in radians."""
        return np.radians(self.rows[:, [c for _, c in self.angle_channels]])

    @property
    def angular_acc(self) -> np.ndarray:
        """(T, A) float64 rad/s^2, central differences of the velocities."""
        return _time_derivative(self.angular_vel, self.times)

    @property
    def root_pos(self) -> np.ndarray:
        """(T, 3) float64 root position, metres."""
        return self.world_pos[:, self.base]

    @property
    def root_quat(self) -> np.ndarray:
        """(T, 4) float64 root world orientation, w first, sign-continuous."""
        return _continuous(quat_from_matrix(self.world_rot[:, self.base]))


def _angle_channels(skeleton: Skeleton) -> list[tuple[int, int]]:
    starts = skeleton.channel_starts()
    return [
        (j, int(starts[j]) + k)
        for j, chans in enumerate(skeleton.channels)
        for k, c in enumerate(chans)
        if c in ROTATION_CHANNELS
    ]


def _time_derivative(values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Central differences along axis 0, one-sided at the ends; zeros for one sample."""
    if len(times) < 2:
        return np.zeros_like(values)
    return np.gradient(values, times, axis=0)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


MAX_SAMPLES = 1_000_000  # samples in one preview (1000 Hz for about 17 minutes)


def control_times(rate: float, duration: float) -> np.ndarray:
    """(T,) float64 times ``k / rate`` for k = 0 .. floor(duration * rate).

    Raises:
        ValueError: ``rate`` is not a positive number or ``duration`` is negative.
    """
    if not (_is_real(rate) and math.isfinite(rate) and rate > 0):
        raise ValueError(
            f"rate: expected a positive number of samples per second, got {rate!r}"
        )
    if not (_is_real(duration) and math.isfinite(duration) and duration >= 0):
        raise ValueError(f"duration: expected seconds >= 0, got {duration!r}")
    if duration * rate > MAX_SAMPLES:
        raise ValueError(
            f"rate x duration: {rate:g} Hz for {duration:g} s is over "
            f"{MAX_SAMPLES} samples, the most one preview holds; lower either"
        )
    count = math.floor(duration * rate + 1e-9) + 1
    return np.arange(count, dtype=np.float64) / rate


def base_joint(skeleton: Skeleton, motion: np.ndarray) -> int:
    """The body's root: walk down from ROOT past one-child joints that never move
    (a static reference such as Bandai's ``joint_Root``) or whose child's position
    channels move (a reference joint carrying only the travel: the body hangs from
    the child)."""
    starts = skeleton.channel_starts()

    def moves(j: int, positions_only: bool) -> bool:
        cols = [
            starts[j] + k
            for k, c in enumerate(skeleton.channels[j])
            if not positions_only or c not in ROTATION_CHANNELS
        ]
        return bool(len(motion) and np.ptp(motion[:, cols], axis=0).max(initial=0) > 0)

    j = 0
    while True:
        kids = np.flatnonzero(skeleton.parents == j)
        if len(kids) != 1 or (moves(j, False) and not moves(int(kids[0]), True)):
            return j
        j = int(kids[0])


def _unwrap_rows(skeleton: Skeleton, rows: np.ndarray) -> np.ndarray:
    """Channel rows with every joint's Euler angles made continuous over rows."""
    rows = rows.copy()
    starts = skeleton.channel_starts()
    for j, chans in enumerate(skeleton.channels):
        cols = [
            (starts[j] + k, c[0]) for k, c in enumerate(chans) if c in ROTATION_CHANNELS
        ]
        if len(cols) == 3:
            order = skeleton.rotation_order(j)
            by_order = [next(col for col, a in cols if a == axis) for axis in order]
            rows[:, by_order] = np.degrees(
                unwrap_euler(np.radians(rows[:, by_order]), order)
            )
        elif cols:
            # The two-triple choice needs all three axes; turns alone still unwrap.
            idx = [col for col, _ in cols]
            rows[:, idx] = np.degrees(np.unwrap(np.radians(rows[:, idx]), axis=0))
    return rows


def _nearest_branch(
    skeleton: Skeleton, rows: np.ndarray, ref: np.ndarray
) -> np.ndarray:
    """Channel rows (N, C) with each joint's Euler angles rewritten as the equivalent
    angles nearest those of ``ref`` (N, C): the same rotations, on ref's branch."""
    rows = rows.copy()
    starts = skeleton.channel_starts()
    turn = 360.0
    for j, chans in enumerate(skeleton.channels):
        cols = {
            c[0]: starts[j] + k for k, c in enumerate(chans) if c in ROTATION_CHANNELS
        }
        if not cols:
            continue
        idx = (
            [cols[a] for a in skeleton.rotation_order(j)]
            if len(cols) == 3
            else list(cols.values())
        )
        a, r = rows[:, idx], ref[:, idx]
        cands = [a]
        if len(cols) == 3:
            # (a, b, c) and (a + 180, 180 - b, c + 180) are the same rotation.
            cands.append(a * [1, -1, 1] + [180.0, 180.0, 180.0])
        cands = [c - turn * np.round((c - r) / turn) for c in cands]
        dist = np.stack([np.sum((c - r) ** 2, axis=1) for c in cands])  # (2, N)
        rows[:, idx] = np.stack(cands)[np.argmin(dist, axis=0), np.arange(len(a))]
    return rows


def _kinematics(
    skeleton: Skeleton, rows: np.ndarray, units_to_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """World positions (T, J, 3) metres and rotations (T, J, 3, 3) of channel rows."""
    local_rot, local_pos = channels_to_local(skeleton, rows)
    world_pos, world_rot = forward_kinematics(skeleton.parents, local_rot, local_pos)
    return world_pos * units_to_m, world_rot


def sample_clip(
    clip: Clip,
    rate: float | None = None,
    duration: float | None = None,
    units_to_m: float = 0.01,
    base: int | None = None,
) -> Trajectory:
    """A BVH clip at a control rate.

    Args:
        clip: the motion.
        rate: samples per second (default: the clip's frame rate).
        duration: seconds from the first frame (default: the whole clip).
        units_to_m: metres per rig unit (0.01 for a centimetre rig).
        base: root joint of the body (default: :func:`base_joint`).

    Raises:
        ValueError: a bad rate or duration, or a duration past the clip's end.
    """
    sk, fps = clip.skeleton, clip.fps
    if clip.num_frames < 1:
        raise ValueError(f"clip: {clip.source} has no frames")
    last = (clip.num_frames - 1) / fps
    rate = fps if rate is None else rate
    duration = last if duration is None else duration
    times = control_times(rate, duration)
    if times[-1] > last + _GRID_EPS / fps:
        raise ValueError(
            f"duration: {duration!r} s runs past the clip's last frame "
            f"at {last:g} s ({clip.source})"
        )

    # Each time falls on a frame or between frames i and i + 1.
    pos = times * fps
    frame = np.clip(np.floor(pos + _GRID_EPS), 0, clip.num_frames - 1).astype(int)
    nxt = np.minimum(frame + 1, clip.num_frames - 1)
    frac = pos - frame
    frac[np.abs(frac) < _GRID_EPS] = 0.0

    # Velocities at the frames, then lerped: differences over a slerp path would
    # see its corners at every frame as spikes of acceleration.
    frames = _unwrap_rows(sk, clip.motion)  # (F, C)
    cols = [c for _, c in _angle_channels(sk)]
    frame_pos, _ = _kinematics(sk, frames, units_to_m)
    frame_ang_vel = _time_derivative(np.radians(frames[:, cols]), clip.times)
    frame_vel = _time_derivative(frame_pos, clip.times)  # (F, J, 3)

    def lerp(values: np.ndarray) -> np.ndarray:
        u = frac.reshape((-1,) + (1,) * (values.ndim - 1))
        return (1 - u) * values[frame] + u * values[nxt]

    if not frac.any():
        rows = frames[frame]
        sampling = f"frames of the clip at {fps:g} fps, taken as they are"
    else:
        rows = _nearest_branch(sk, _interpolate(clip, frame, nxt, frac), lerp(frames))
        sampling = (
            f"interpolated from the clip's {fps:g} fps frames: slerp of "
            f"local joint rotations, linear for positions"
        )
    world_pos, world_rot = _kinematics(sk, rows, units_to_m)
    traj = Trajectory(
        sk,
        times,
        rows,
        lerp(frame_ang_vel),
        world_pos,
        world_rot,
        lerp(frame_vel),
        base_joint(sk, clip.motion) if base is None else base,
        units_to_m,
        float(rate),
        clip.source,
        sampling,
        f"central differences over the clip's {fps:g} fps frames (one-sided at "
        f"its ends), linear between frames",
    )
    logger.info("sampled %s: %d samples at %g Hz", clip.source, len(times), rate)
    return traj


def _interpolate(
    clip: Clip, frame: np.ndarray, nxt: np.ndarray, frac: np.ndarray
) -> np.ndarray:
    """Channel rows (T, C) a fraction ``frac`` of the way from frames ``frame`` to
    ``nxt``: slerp of local rotations, linear for local positions."""
    local_rot, local_pos = clip.local_transforms()
    quat = quat_from_matrix(local_rot)  # (F, J, 4)
    u = np.broadcast_to(frac[:, None], quat[frame].shape[:2])  # (T, J)
    rot = quat_to_matrix(quat_slerp(quat[frame], quat[nxt], u))
    pos = (1 - u[..., None]) * local_pos[frame] + u[..., None] * local_pos[nxt]
    return local_to_channels(clip.skeleton, rot, pos)


def sample_stream(
    stream: PoseStream, rate: float, duration: float, dt: float = 1e-4
) -> Trajectory:
    """A model stream at a control rate: poses at exactly ``k / rate``.

    Args:
        stream: an open :class:`motionode.generate.PoseStream`.
        rate: samples per second.
        duration: seconds.
        dt: half-width of the central differences, seconds.

    Raises:
        ValueError: a bad rate, duration or ``dt``.
    """
    if not (_is_real(dt) and 0 < dt <= 0.01):
        raise ValueError(f"dt: expected seconds in (0, 0.01], got {dt!r}")
    times = control_times(rate, duration)
    sk, units = stream.skeleton, stream.model.spec.units_to_m
    rows = stream.channels_at(times, continuous=True)

    # Neighbours t - dt, t + dt (t, t + dt, t + 2 dt where t - dt < 0), their Euler
    # angles put on the exported angles' branch, so a velocity is the derivative of
    # the exported curve even where a joint passes near gimbal lock.
    inner = times >= dt
    ask = np.concatenate(
        [
            times[inner] - dt,
            times[inner] + dt,
            times[~inner],
            times[~inner] + dt,
            times[~inner] + 2 * dt,
        ]
    )
    near = stream.channels_at(ask, continuous=True)
    centre = np.concatenate(
        [rows[inner], rows[inner], rows[~inner], rows[~inner], rows[~inner]]
    )
    near = _nearest_branch(sk, near, centre)
    cols = [c for _, c in _angle_channels(sk)]
    near_pos, _ = _kinematics(sk, near, units)
    n = int(inner.sum())

    def slope(values: np.ndarray) -> np.ndarray:
        """(T, ...) derivatives from neighbour values laid out as ``ask`` is."""
        out = np.empty((len(times),) + values.shape[1:])
        out[inner] = (values[n : 2 * n] - values[:n]) / (2 * dt)
        f0, f1, f2 = np.split(values[2 * n :], 3)
        out[~inner] = (4 * f1 - 3 * f0 - f2) / (2 * dt)
        return out

    ang_vel = slope(np.radians(near[:, cols]))  # (T, A)
    world_vel = slope(near_pos)  # (T, J, 3)
    world_pos, world_rot = _kinematics(sk, rows, units)
    source = f"model {stream.source}, seed {stream.seed}"
    logger.info("sampled %s: %d samples at %g Hz", source, len(times), rate)
    return Trajectory(
        sk,
        times,
        rows,
        ang_vel,
        world_pos,
        world_rot,
        world_vel,
        int(stream.model.spec.root),
        float(units),
        float(rate),
        source,
        "the model's pose at exactly each time k / rate (no interpolation)",
        f"central differences of the model over +-{dt:g} s around each time "
        f"(one-sided at t < {dt:g} s); the model is continuous in time",
    )


# ---------------------------------------------------------------------------- files


def trajectory_columns(traj: Trajectory) -> list[dict]:
    """What every exported column holds: name, quantity, unit and more."""
    cols = [{"name": "time_s", "quantity": "time", "unit": "s"}]
    root = traj.skeleton.names[traj.base]
    for axis in "xyz":
        cols.append(
            {
                "name": f"root_{axis}_m",
                "quantity": "root position",
                "axis": axis,
                "joint": root,
                "unit": "m",
            }
        )
    for part in "wxyz":
        cols.append(
            {
                "name": f"root_q{part}",
                "quantity": "root orientation",
                "component": part,
                "joint": root,
                "unit": "1",
            }
        )
    sk = traj.skeleton
    for kind, unit in (("angle", "rad"), ("angular velocity", "rad/s")):
        for j, col in traj.angle_channels:
            channel = sk.channels[j][col - sk.channel_starts()[j]]
            suffix = "rad" if kind == "angle" else "rad_s"
            cols.append(
                {
                    "name": f"{sk.names[j]}.{channel}_{suffix}",
                    "quantity": f"joint {kind}",
                    "joint": sk.names[j],
                    "channel": channel,
                    "order": sk.rotation_order(j),
                    "unit": unit,
                }
            )
    return cols


def _table(traj: Trajectory) -> np.ndarray:
    table = np.concatenate(
        [
            traj.times[:, None],
            traj.root_pos,
            traj.root_quat,
            traj.angles,
            traj.angular_vel,
        ],
        axis=1,
    )  # (T, K)
    if not np.isfinite(table).all():
        t, k = np.argwhere(~np.isfinite(table))[0]
        raise ValueError(
            f"trajectory: non-finite value in column {k} at t = "
            f"{traj.times[t]!r} s; refusing to write it"
        )
    return table


def _header(traj: Trajectory) -> list[str]:
    root = traj.skeleton.names[traj.base]
    return [
        "motionode trajectory",
        f"source: {traj.source}",
        f"samples: {len(traj.times)} at {traj.rate:g} Hz, times k / {traj.rate:g} s",
        f"poses: {traj.sampling}",
        f"velocities: {traj.velocity}",
        f"lengths: metres (rig units x {traj.units_to_m:g}); world frame Y up",
        f"root: joint {root!r}; orientation a unit quaternion w, x, y, z (w first)",
        (
            "angles: each joint's BVH rotation channels, intrinsic Euler angles "
            "applied in the joint's channel order, radians, continuous over time"
        ),
        "angular velocities: time derivatives of those angles, rad/s",
    ]


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_csv(traj: Trajectory, path: str | os.PathLike) -> None:
    """Write the trajectory as CSV: '#' comment lines describing it and every
    column, a row of column names, then one row per sample (17 significant
    digits, so values read back exactly)."""
    cols = trajectory_columns(traj)
    out = io.StringIO(newline="")
    for line in _header(traj):
        out.write(f"# {line}\n")
    out.write("# columns:\n")
    for k, c in enumerate(cols):
        order = f", {c['order']} order" if "order" in c else ""
        out.write(f"#   {k} {c['name']}: {c['quantity']}{order} ({c['unit']})\n")
    csv.writer(out, lineterminator="\n").writerow([c["name"] for c in cols])
    np.savetxt(out, _table(traj), fmt="%.17g", delimiter=",")
    write_atomic(path, out.getvalue().encode("utf-8"))
    logger.info("wrote %s (%d rows)", path, len(traj.times))


def write_npz(traj: Trajectory, path: str | os.PathLike) -> None:
    """Write the trajectory as NPZ: ``table`` (T, K) float64, ``columns`` (a JSON
    list describing each column) and ``header`` (JSON list of header lines); no
    pickles, so ``np.load`` reads it with ``allow_pickle=False``."""
    buf = io.BytesIO()
    np.savez(
        buf,
        table=_table(traj),
        columns=np.array(json.dumps(trajectory_columns(traj))),
        header=np.array(json.dumps(_header(traj))),
    )
    write_atomic(path, buf.getvalue())
    logger.info("wrote %s (%d rows)", path, len(traj.times))


# ---------------------------------------------------------------------- all of it


def pose_samples(
    traj: Trajectory, times: Sequence[float], name: str = "glb_times"
) -> list[int]:
    """Index of the sample nearest each of ``times`` (seconds).

    A time within half a sample period of the motion's first or last sample takes
    that sample, as times between samples take the nearest one.

    Raises:
        ValueError: a time further outside the motion, or not a finite number; the
            message names ``name``, the time and the motion's span.
    """
    first, last = float(traj.times[0]), float(traj.times[-1])
    half = 0.5 / traj.rate
    out = []
    for t in times:
        if not (_is_real(t) and first - half <= t <= last + half):
            raise ValueError(
                f"{name}: expected times from {first:g} to {last:g} s (the first "
                f"and last samples), got {t!r}"
            )
        out.append(int(np.argmin(np.abs(traj.times - t))))
    return out


def write_preview(
    traj: Trajectory,
    out_dir: str | os.PathLike,
    limits: Limits | None = None,
    floor: str | float = "zero",
    glb_times: list[float] | None = None,
    pictures: bool = True,
) -> tuple[dict, list[Path]]:
    """Export, check and draw a trajectory into ``out_dir``.

    Writes ``trajectory.csv``, ``trajectory.npz``, ``report.json``, one
    ``pose_<t>s.glb`` per time of ``glb_times`` (default: first, middle, last
    sample; each time snaps to the nearest sample, see :func:`pose_samples`) and,
    with ``pictures`` and matplotlib, ``contact_sheet.png``, ``angles.png`` and
    ``velocities.png``.

    Returns:
        the report (as written to report.json) and the paths written.

    Raises:
        ValueError: limits that do not fit the rig, a bad ``floor``, a time of
            ``glb_times`` outside the motion, or a non-finite value in the motion.
        ImportError: trimesh is missing.
    """
    if glb_times is None:
        poses = sorted({0, len(traj.times) // 2, len(traj.times) - 1})
    else:
        poses = pose_samples(traj, glb_times)
    limits = limits or Limits()
    limits.check_rig(traj.skeleton)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sk, cfg = traj.skeleton, limits.bodies
    bones = build_bones(
        sk,
        traj.units_to_m,
        traj.base,
        cfg.radius_m,
        cfg.default_radius_m,
        cfg.end_length_m,
    )
    feet = foot_joints(sk, limits.contact, traj.base)
    plane = find_floor(traj, floor, feet)
    report = {
        "source": traj.source,
        "rate_hz": traj.rate,
        "samples": len(traj.times),
        "duration_s": float(traj.times[-1]),
        "poses": traj.sampling,
        "velocities": traj.velocity,
        "units_to_m": traj.units_to_m,
        "root": sk.names[traj.base],
        "limits": limits.source,
        "feet": [sk.names[j] for j in feet],
        "bodies": [{"name": b.name, "radius_m": b.radius} for b in bones],
        **check_motion(traj, limits, bones, plane, feet),
    }
    written = [out / "trajectory.csv", out / "trajectory.npz", out / "report.json"]
    write_csv(traj, written[0])
    write_npz(traj, written[1])
    write_atomic(
        written[2],
        (json.dumps(report, indent=1, allow_nan=False) + "\n").encode("utf-8"),
    )

    # Bodies in a collision at a pose's time are drawn red.
    for k in poses:
        seg = bone_segments(bones, traj.world_pos[k], traj.world_rot[k])
        red = {
            n
            for pair in report["self_collision"]["colliding_pairs"]
            for lo, hi in pair["intervals"]
            if lo <= traj.times[k] <= hi
            for n in pair["bones"]
        }
        path = out / f"pose_{traj.times[k]:.4f}s.glb"
        write_glb(path, pose_scene(bones, seg, red))
        written.append(path)

    if pictures:
        from motionode.pictures import contact_sheet, plot_curves

        contact_sheet(traj, out / "contact_sheet.png", report=report, floor_y=plane.y_m)
        plot_curves(traj, report, out / "angles.png", "angle")
        plot_curves(traj, report, out / "velocities.png", "velocity")
        written += [
            out / "contact_sheet.png",
            out / "angles.png",
            out / "velocities.png",
        ]
    return report, written
