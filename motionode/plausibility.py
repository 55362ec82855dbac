"""Is a motion physically plausible? Foot sliding, bone lengths and jerk.

Every function takes world joint positions (F, J, 3) float in metres, Y up, sampled
at a steady ``fps``, so ground truth, reconstructions and generated streams are
measured the same way. Compare figures only at the same frame rate: jerk in
particular grows with the rate on noisy data.

- **Foot sliding.** A foot joint is in contact in a frame when its height is within
  ``height_margin_m`` of its resting height and its speed (3D, central differences)
  is below ``speed_m_s``. Sliding is its horizontal (XZ) speed in those frames, in
  mm/s. Resting heights are per joint (an ankle rests higher than a toe) and should
  come from real data, so that a generated foot that floats or sinks is seen.
- **Bone length.** The distance between each joint and its parent against the rig's
  bone length; a model that outputs joint rotations through forward kinematics gets
  0 up to rounding.
- **Jerk.** Mean norm of the third time derivative of each joint's position
  (third forward difference times fps cubed), m/s^3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "ContactRule",
    "bone_length_error",
    "contacts",
    "foot_slide",
    "jerk",
    "resting_heights",
]


@dataclass
class ContactRule:
    """When a foot joint counts as planted."""

    height_margin_m: float = 0.03  # above the joint's resting height
    speed_m_s: float = 0.3  # 3D speed below which a low foot is planted
    floor_y_m: float = 0.0  # height of the floor in the rig's world


def _check(world_pos: np.ndarray, fps: float) -> np.ndarray:
    pos = np.asarray(world_pos, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"world_pos: expected shape (F, J, 3), got {pos.shape}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps: expected a positive number, got {fps}")
    return pos


def resting_heights(
    world_pos: list[np.ndarray], feet: list[int], floor_y_m: float = 0.0
) -> np.ndarray:
    """(len(feet),) height of each foot joint above the floor when it rests: its
    1st percentile over the frames of all the given (F, J, 3) sequences."""
    heights = np.concatenate([np.asarray(p)[:, feet, 1] for p in world_pos])
    return np.percentile(heights - floor_y_m, 1, axis=0)


def contacts(
    world_pos: np.ndarray,
    fps: float,
    feet: list[int],
    rest: np.ndarray,
    rule: ContactRule,
) -> tuple[np.ndarray, np.ndarray]:
    """Which foot joints are planted, (F, len(feet)) bool, and their horizontal
    speeds (F, len(feet)) in m/s."""
    pos = _check(world_pos, fps)[:, feet]  # (F, K, 3)
    if len(pos) < 2:
        still = np.zeros(pos.shape[:2])
        return np.zeros(pos.shape[:2], dtype=bool), still
    vel = np.gradient(pos, axis=0) * fps  # (F, K, 3)
    speed = np.linalg.norm(vel, axis=-1)
    horizontal = np.linalg.norm(vel[..., [0, 2]], axis=-1)
    height = pos[..., 1] - rule.floor_y_m - np.asarray(rest)[None]
    planted = (height < rule.height_margin_m) & (speed < rule.speed_m_s)
    return planted, horizontal


def foot_slide(
    world_pos: np.ndarray,
    fps: float,
    feet: list[int],
    rest: np.ndarray,
    rule: ContactRule | None = None,
) -> dict:
    """Sliding of planted feet.

    Returns:
        {"slide_mm_s": mean horizontal speed over planted frames of all foot
        joints (nan if none), "contact_fraction": planted share of foot-joint
        frames, "planted_frames": count, "slide_sum_mm_s": sum of the speeds (to
        pool sequences)}.
    """
    rule = rule or ContactRule()
    planted, horizontal = contacts(world_pos, fps, feet, rest, rule)
    n = int(planted.sum())
    total = 1000 * float(horizontal[planted].sum())
    return {
        "slide_mm_s": total / n if n else float("nan"),
        "contact_fraction": float(planted.mean()) if planted.size else float("nan"),
        "planted_frames": n,
        "slide_sum_mm_s": total,
    }


def bone_length_error(
    world_pos: np.ndarray, bones: list[tuple[int, int]], lengths_m: np.ndarray
) -> dict:
    """Bone lengths against the rig's.

    Args:
        world_pos: (F, J, 3) metres.
        bones: (child, parent) joint pairs.
        lengths_m: (len(bones),) the rig's length of each bone.

    Returns:
        {"mean_mm": ..., "max_mm": ...} absolute length error over bones and frames.
    """
    pos = np.asarray(world_pos, dtype=np.float64)
    child = [c for c, _ in bones]
    parent = [p for _, p in bones]
    got = np.linalg.norm(pos[:, child] - pos[:, parent], axis=-1)  # (F, B)
    err = 1000 * np.abs(got - np.asarray(lengths_m)[None])
    if err.size == 0:
        return {"mean_mm": float("nan"), "max_mm": float("nan")}
    return {"mean_mm": float(err.mean()), "max_mm": float(err.max())}


def jerk(world_pos: np.ndarray, fps: float) -> np.ndarray:
    """(F - 3, J) norm of each joint's jerk in m/s^3, third forward differences."""
    pos = _check(world_pos, fps)
    if len(pos) < 4:
        return np.zeros((0, pos.shape[1]))
    d3 = np.diff(pos, n=3, axis=0) * fps**3  # (F - 3, J, 3)
    return np.linalg.norm(d3, axis=-1)
