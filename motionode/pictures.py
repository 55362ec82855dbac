"""Pictures of a preview, drawn headless with matplotlib's Agg canvas (no display,
no OpenGL): a contact sheet of poses over time, and joint curves against limits."""

from __future__ import annotations

import io
import logging
import math
import os

import numpy as np

from motionode.bvh import Skeleton
from motionode.feasibility import relative_margin
from motionode.preview import Trajectory, write_atomic

logger = logging.getLogger(__name__)

__all__ = ["contact_sheet", "plot_curves"]


def _figure(size_px: tuple[int, int], dpi: int = 100):
    """A matplotlib Figure on the Agg canvas (no display, no pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "pictures need matplotlib: pip install "
            "'motionode[preview]' (or pip install matplotlib)"
        ) from exc
    width, height = size_px
    if not (width >= 100 and height >= 100):
        raise ValueError(f"size_px: expected at least 100 x 100 pixels, got {size_px}")
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    write_atomic(path, buf.getvalue())
    logger.info("wrote %s", path)


def _bad_times(report: dict | None) -> list[list[float]]:
    """Every violation interval in a feasibility report."""
    found: list[list[float]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "intervals":
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(report or {})
    return found


def contact_sheet(
    traj: Trajectory,
    path: str | os.PathLike,
    count: int = 12,
    columns: int = 4,
    size_px: tuple[int, int] = (1600, 900),
    report: dict | None = None,
    floor_y: float = 0.0,
) -> None:
    """PNG of ``count`` poses evenly spaced in time, orthographic stick figures.

    Each cell shows the pose seen from the character's side and from its front
    (across and along the line between the root's two widest-apart children, the
    hips of a pelvis), centred on the root, at one scale for all cells; the floor
    is a line.
    Cells at times inside a violation interval of ``report`` have a red title.

    Raises:
        ImportError: matplotlib is missing.
    """
    fig = _figure(size_px)
    sk, pos = traj.skeleton, traj.world_pos
    picks = np.unique(
        np.linspace(0, len(traj.times) - 1, max(count, 1)).round().astype(int)
    )
    lateral = _lateral(traj)  # (T, 2) unit ground-plane vectors
    body = [
        j for j in range(sk.num_joints) if j == traj.base or _below(sk, j, traj.base)
    ]
    extent = max(float(np.ptp(pos[:, body, 1])), 0.5)
    bad = _bad_times(report)
    rows = math.ceil(len(picks) / columns)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.04, hspace=0.12
    )
    for cell, k in enumerate(picks):
        ax = fig.add_subplot(rows, columns, cell + 1)
        centre = traj.root_pos[k, [0, 2]]
        side = np.array([-lateral[k, 1], lateral[k, 0]])  # facing, up to its sign
        for shift, axis, label in (
            (-0.6 * extent, side, "side"),
            (0.6 * extent, lateral[k], "front"),
        ):
            horiz = (pos[k][:, [0, 2]] - centre) @ axis + shift  # (J,)
            for j in body:
                p = sk.parents[j]
                if j != traj.base and p >= 0:
                    ax.plot(
                        [horiz[p], horiz[j]],
                        [pos[k, p, 1], pos[k, j, 1]],
                        color="#1f4e79",
                        linewidth=1.5,
                    )
            ax.text(
                shift,
                floor_y + 1.1 * extent,
                label,
                fontsize=7,
                ha="center",
                va="top",
                color="#555555",
            )
        ax.axhline(floor_y, color="#888888", linewidth=0.8)
        t = float(traj.times[k])
        hit = any(a - 1e-9 <= t <= b + 1e-9 for a, b in bad)
        ax.set_title(f"t = {t:.3f} s", fontsize=8, color="#c0392b" if hit else "black")
        ax.set_xlim(-1.2 * extent, 1.2 * extent)
        ax.set_ylim(floor_y - 0.05 * extent, floor_y + 1.15 * extent)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{traj.source}: side and front views", fontsize=10)
    _save_png(fig, path)


def _lateral(traj: Trajectory) -> np.ndarray:
    """(T, 2) unit x-z direction across the body: between the two children of the
    root that lie furthest apart (the hips of a pelvis), else world X."""
    kids = np.flatnonzero(traj.skeleton.parents == traj.base)
    out = np.tile([1.0, 0.0], (len(traj.times), 1))
    if len(kids) < 2:
        return out
    xz = traj.world_pos[:, kids][:, :, [0, 2]]  # (T, K, 2)
    gap = np.linalg.norm(xz[:, :, None] - xz[:, None], axis=-1).mean(axis=0)
    a, b = np.unravel_index(int(np.argmax(gap)), gap.shape)
    across = xz[:, a] - xz[:, b]
    norm = np.linalg.norm(across, axis=-1, keepdims=True)
    ok = norm[:, 0] > 1e-6
    out[ok] = across[ok] / norm[ok]
    return out


def _below(skeleton: Skeleton, joint: int, base: int) -> bool:
    p = int(skeleton.parents[joint])
    while p >= 0:
        if p == base:
            return True
        p = int(skeleton.parents[p])
    return False


def plot_curves(
    traj: Trajectory,
    report: dict,
    path: str | os.PathLike,
    kind: str = "angle",
    size_px: tuple[int, int] = (1600, 1000),
    max_panels: int = 24,
) -> None:
    """PNG of joint angles (``kind="angle"``, degrees) or angular velocities
    (``"velocity"``, deg/s) against time with their limits as dashed lines and
    violated intervals shaded: the channels with limits, tightest first, or else
    those that move most; at most ``max_panels`` of them. Angles are drawn with
    the whole-turn shift the report compared them with.

    Raises:
        ImportError: matplotlib is missing.
        ValueError: unknown ``kind``.
    """
    keys = {"angle": ("angle_deg", "deg"), "velocity": ("velocity_deg_s", "deg/s")}
    if kind not in keys:
        raise ValueError(f"kind: expected one of {sorted(keys)}, got {kind!r}")
    key, unit = keys[kind]
    entries = report["joints"]
    values = np.degrees(traj.angles if kind == "angle" else traj.angular_vel)
    limited = [a for a, e in enumerate(entries) if e[key]["limit"] is not None]
    limited.sort(key=lambda a: relative_margin(entries[a][key]))
    spread = np.ptp(values, axis=0) if len(values) else np.zeros(len(entries))
    chosen = limited or list(np.argsort(-spread, kind="stable"))
    chosen = chosen[:max_panels]

    fig = _figure(size_px)
    cols = max(1, min(4, len(chosen)))
    rows = max(1, math.ceil(len(chosen) / cols))
    fig.subplots_adjust(
        left=0.05, right=0.98, bottom=0.05, top=0.93, hspace=0.6, wspace=0.25
    )
    for cell, a in enumerate(chosen):
        e = entries[a]
        ax = fig.add_subplot(rows, cols, cell + 1)
        ax.plot(
            traj.times,
            values[:, a] + e[key].get("shift", 0.0),
            color="#1f4e79",
            linewidth=1.0,
        )
        limit = e[key]["limit"]
        if limit is not None:
            bounds = limit if kind == "angle" else [-limit, limit]
            for b in bounds:
                ax.axhline(b, color="#c0392b", linestyle="--", linewidth=0.8)
            for lo, hi in e[key].get("intervals", []):
                ax.axvspan(
                    lo, max(hi, lo + 0.5 / traj.rate), color="#c0392b", alpha=0.25
                )
        ax.set_title(f"{e['joint']}.{e['axis']} ({unit})", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{traj.source}: joint {kind} against limits (time in s)", fontsize=10)
    _save_png(fig, path)
