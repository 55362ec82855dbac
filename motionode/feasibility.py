"""Can a robot follow this motion? Joint limits, self-collision, floor and feet.

Limits come from a small JSON file (every key optional; unknown keys are errors)::

    {
      "format": "motionode-limits/1",
      "description": "free text (or a list of lines)",
      "joints": {
        "LowerLeg_L": {
          "range_deg": {"Z": [-5, 150]},
          "max_velocity_deg_s": 1200,
          "max_acceleration_deg_s2": {"Z": 40000}
        }
      },
      "bodies": {
        "default_radius_m": 0.04,
        "radius_m": {"Spine": 0.11},
        "end_length_m": {"Head": 0.2},
        "ignore_within_bones": 2,
        "ignore_pairs": [["Hand_L", "Chest"]]
      },
      "contact": {
        "feet": ["Toes_L", "Toes_R"],
        "height_m": 0.05, "speed_m_s": 0.5, "max_slide_m_s": 0.1
      }
    }

- ``joints``: per joint name, per rotation axis ("X", "Y", "Z": the joint's
  ``Xrotation``... channel, an intrinsic Euler angle in the rig's own order),
  ``range_deg`` [min, max] in degrees; ``max_velocity_deg_s`` and
  ``max_acceleration_deg_s2`` either one number for every axis of the joint or a
  per-axis object. Joints and axes not listed are unlimited.
- ``bodies``: capsule radius in metres per joint (the bones hanging from it), the
  default for the others (absent: 2.5% of the rig's rest extent), extra bone
  length for leaf joints whose End Site has no length, and which pairs never
  count as colliding: bones at most ``ignore_within_bones`` apart in the skeleton
  (1: sharing a joint), and every bone of one joint against every bone of another.
- ``contact``: foot joints (absent: joints named like foot, toe or ankle); a foot is
  in contact when it is below ``height_m`` above the floor and slower than
  ``speed_m_s``; its horizontal speed then is sliding, allowed up to
  ``max_slide_m_s``.

Angles are compared with limits after shifting each whole curve by the number of
full turns that brings its median nearest the middle of the range (Euler channels
are continuous over time, but where they start is a convention of the file).

The report gives each angle's used range after that shift, and the shift itself
(``shift``, degrees). Every check reports its worst margin (positive: inside the
limit, negative: by how much it is exceeded) with the time it happens, and the time
intervals where it is violated: ``[first, last]`` sample times of each run of
violating samples.

Angular velocities are rates of the Euler channels, so they grow without bound
where a joint nears gimbal lock (its middle angle at +-90 degrees); a rig whose
joint frames sit there at rest (Bandai's Spine) needs such joints left unlimited.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from motionode.meshes import Bone, bone_hops, bone_segments, segment_distance

if TYPE_CHECKING:
    from motionode.preview import Trajectory

logger = logging.getLogger(__name__)

__all__ = [
    "AxisLimit",
    "BodyConfig",
    "ContactConfig",
    "Floor",
    "Limits",
    "check_motion",
    "find_floor",
    "foot_joints",
    "intervals",
    "load_limits",
    "parse_limits",
    "relative_margin",
]

LIMITS_FORMAT = "motionode-limits/1"
_FOOT_NAME = re.compile(r"foot|toe|ankle", re.IGNORECASE)


@dataclass
class AxisLimit:
    """Limits of one Euler channel; None means unlimited."""

    min_deg: float | None = None
    max_deg: float | None = None
    velocity_deg_s: float | None = None
    acceleration_deg_s2: float | None = None


@dataclass
class BodyConfig:
    """Capsule bodies and which pairs of them are checked for collision."""

    default_radius_m: float | None = None  # None: 2.5% of the rig's rest extent
    radius_m: dict[str, float] = field(default_factory=dict)  # per joint name
    end_length_m: dict[str, float] = field(default_factory=dict)  # per leaf joint
    ignore_within_bones: int = 2  # bones this close in the skeleton never collide
    ignore_pairs: list[tuple[str, str]] = field(default_factory=list)  # joint names


@dataclass
class ContactConfig:
    """When a foot touches the floor, and how fast it may slide then."""

    feet: list[str] | None = None  # None: joints named like foot, toe or ankle
    height_m: float = 0.05  # above the floor
    speed_m_s: float = 0.5  # 3D speed below which a low foot is planted
    max_slide_m_s: float = 0.1  # horizontal speed allowed while planted


@dataclass
class Limits:
    """Everything a limits file says; ``Limits()`` is a robot without limits."""

    joints: dict[str, dict[str, AxisLimit]] = field(default_factory=dict)
    bodies: BodyConfig = field(default_factory=BodyConfig)
    contact: ContactConfig = field(default_factory=ContactConfig)
    source: str = "<no limits file>"
    description: str = ""

    def check_rig(self, skeleton) -> None:
        """Raise ValueError if a joint or axis named here is not in ``skeleton``."""
        names = skeleton.names
        named = [("joints", n) for n in self.joints]
        named += [("bodies.radius_m", n) for n in self.bodies.radius_m]
        named += [("bodies.end_length_m", n) for n in self.bodies.end_length_m]
        named += [
            ("bodies.ignore_pairs", n) for p in self.bodies.ignore_pairs for n in p
        ]
        named += [("contact.feet", n) for n in self.contact.feet or []]
        for where, name in named:
            if name not in names:
                raise ValueError(
                    f"{self.source}: {where}: {name!r} is not a joint of "
                    f"the rig; joints: {', '.join(names)}"
                )
        for name, axes in self.joints.items():
            chans = skeleton.channels[names.index(name)]
            for axis in axes:
                if f"{axis}rotation" not in chans:
                    raise ValueError(
                        f"{self.source}: joints.{name}: axis {axis!r} has "
                        f"no channel; the joint has {list(chans)}"
                    )


# ---------------------------------------------------------------------------- file


def load_limits(path: str | os.PathLike) -> Limits:
    """Read a limits file (format in the module docstring).

    Raises:
        ValueError: not JSON (message ``path:line: ...``) or a bad entry (message
            names the entry, the value and what was expected).
        OSError: the file cannot be read.
    """
    path = str(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: expected JSON, {exc.msg}") from None
    return parse_limits(data, path)


def parse_limits(data: dict, source: str = "<limits>") -> Limits:
    """Limits from the parsed JSON of a limits file; ``source`` names it in errors."""
    _keys(data, {"format", "description", "joints", "bodies", "contact"}, source, "")
    fmt = data.get("format", LIMITS_FORMAT)
    if fmt != LIMITS_FORMAT:
        raise ValueError(f"{source}: format: expected {LIMITS_FORMAT!r}, got {fmt!r}")
    text = data.get("description", "")
    lines = text if isinstance(text, list) else [text]
    if not all(isinstance(t, str) for t in lines):
        raise ValueError(
            f"{source}: description: expected text or a list of lines, got {text!r}"
        )
    text = " ".join(lines)
    out = Limits(source=source, description=text)
    for name, entry in _obj(data.get("joints", {}), source, "joints").items():
        out.joints[name] = _joint(entry, source, f"joints.{name}")

    where = "bodies"
    bodies = _obj(data.get("bodies", {}), source, where)
    _keys(
        bodies,
        {
            "default_radius_m",
            "radius_m",
            "end_length_m",
            "ignore_within_bones",
            "ignore_pairs",
        },
        source,
        where,
    )
    cfg = out.bodies
    if "default_radius_m" in bodies:
        cfg.default_radius_m = _pos(
            bodies["default_radius_m"], source, f"{where}.default_radius_m"
        )
    for key in ("radius_m", "end_length_m"):
        for name, v in _obj(bodies.get(key, {}), source, f"{where}.{key}").items():
            getattr(cfg, key)[name] = _pos(v, source, f"{where}.{key}.{name}")
    hops = bodies.get("ignore_within_bones", cfg.ignore_within_bones)
    if not (isinstance(hops, int) and not isinstance(hops, bool) and hops >= 0):
        raise ValueError(
            f"{source}: {where}.ignore_within_bones: expected a whole "
            f"number >= 0, got {hops!r}"
        )
    cfg.ignore_within_bones = hops
    for k, pair in enumerate(bodies.get("ignore_pairs", [])):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(n, str) for n in pair)
        ):
            raise ValueError(
                f"{source}: {where}.ignore_pairs[{k}]: expected two "
                f"joint names, got {pair!r}"
            )
        cfg.ignore_pairs.append((pair[0], pair[1]))

    where = "contact"
    contact = _obj(data.get("contact", {}), source, where)
    _keys(contact, {"feet", "height_m", "speed_m_s", "max_slide_m_s"}, source, where)
    if "feet" in contact:
        feet = contact["feet"]
        if not (isinstance(feet, list) and all(isinstance(n, str) for n in feet)):
            raise ValueError(
                f"{source}: {where}.feet: expected a list of joint names, got {feet!r}"
            )
        out.contact.feet = list(feet)
    for key in ("height_m", "speed_m_s", "max_slide_m_s"):
        if key in contact:
            setattr(out.contact, key, _pos(contact[key], source, f"{where}.{key}"))
    return out


def _joint(entry: object, source: str, where: str) -> dict[str, AxisLimit]:
    entry = _obj(entry, source, where)
    _keys(
        entry,
        {"range_deg", "max_velocity_deg_s", "max_acceleration_deg_s2"},
        source,
        where,
    )
    axes: dict[str, AxisLimit] = {}
    for axis, pair in _obj(
        entry.get("range_deg", {}), source, f"{where}.range_deg"
    ).items():
        _axis(axis, source, f"{where}.range_deg")
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(_is_number(v) for v in pair)
            and pair[0] <= pair[1]
        ):
            raise ValueError(
                f"{source}: {where}.range_deg.{axis}: expected [min, max] "
                f"degrees with min <= max, got {pair!r}"
            )
        lim = axes.setdefault(axis, AxisLimit())
        lim.min_deg, lim.max_deg = float(pair[0]), float(pair[1])
    for key, attr in (
        ("max_velocity_deg_s", "velocity_deg_s"),
        ("max_acceleration_deg_s2", "acceleration_deg_s2"),
    ):
        if key not in entry:
            continue
        value = entry[key]
        per_axis = value if isinstance(value, dict) else dict.fromkeys("XYZ", value)
        for axis, v in per_axis.items():
            _axis(axis, source, f"{where}.{key}")
            v = _pos(v, source, f"{where}.{key}.{axis}")
            setattr(axes.setdefault(axis, AxisLimit()), attr, v)
    return axes


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos(v: object, source: str, where: str) -> float:
    if not (_is_number(v) and v > 0):
        raise ValueError(f"{source}: {where}: expected a positive number, got {v!r}")
    return float(v)


def _axis(axis: str, source: str, where: str) -> None:
    if axis not in ("X", "Y", "Z"):
        raise ValueError(
            f"{source}: {where}: expected axis 'X', 'Y' or 'Z', got {axis!r}"
        )


def _obj(v: object, source: str, where: str) -> dict:
    # A wrong JSON type is a bad value in the file, reported like any other.
    if not isinstance(v, dict):
        raise ValueError(  # noqa: TRY004
            f"{source}: {where or 'top level'}: expected an object, "
            f"got {type(v).__name__} {str(v)[:40]!r}"
        )
    return v


def _keys(data: dict, known: set[str], source: str, where: str) -> None:
    unknown = sorted(set(_obj(data, source, where)) - known)
    if unknown:
        raise ValueError(
            f"{source}: {where or 'top level'}: unknown keys {unknown}; "
            f"expected some of {sorted(known)}"
        )


# ---------------------------------------------------------------------------- floor


@dataclass
class Floor:
    """Height of the floor plane y = ``y_m`` (metres, world) and how it was found."""

    y_m: float
    how: str


def foot_joints(skeleton, contact: ContactConfig, base: int) -> list[int]:
    """Indices of the foot joints: the configured ones, else those named like feet
    below the base joint."""
    if contact.feet is not None:
        return [skeleton.index(n) for n in contact.feet]
    below = {base}
    for j, p in enumerate(skeleton.parents):
        if p in below:
            below.add(j)
    return [j for j in sorted(below) if _FOOT_NAME.search(skeleton.names[j])]


def find_floor(
    traj: Trajectory, floor: str | float, feet: list[int], window_s: float = 0.5
) -> Floor:
    """Where the floor is.

    Args:
        floor: ``"zero"`` (y = 0 in the rig's world, after unit conversion),
            ``"feet"`` (the lowest foot joint over the first ``window_s`` seconds),
            or a height in metres.
        feet: foot joint indices, for ``"feet"``.

    Raises:
        ValueError: unknown ``floor``, or ``"feet"`` with no foot joints.
    """
    if _is_number(floor):
        return Floor(float(floor), "given")
    if floor == "zero":
        return Floor(0.0, "y = 0 in the rig's world frame")
    if floor == "feet":
        if not feet:
            raise ValueError(
                "floor: 'feet' needs foot joints (contact.feet in the "
                "limits file); none found"
            )
        first = traj.times <= traj.times[0] + window_s + 1e-9
        y = float(traj.world_pos[first][:, feet, 1].min())
        names = ", ".join(traj.skeleton.names[j] for j in feet)
        return Floor(y, f"lowest foot joint ({names}) over the first {window_s:g} s")
    raise ValueError(
        f"floor: expected 'zero', 'feet' or a height in metres, got {floor!r}"
    )


# ---------------------------------------------------------------------------- checks


def intervals(times: np.ndarray, bad: np.ndarray) -> list[list[float]]:
    """``[first, last]`` times of each run of True in ``bad`` (T,) over ``times``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], bad.astype(np.int8), [0]])))
    return [
        [float(times[s]), float(times[e - 1])] for s, e in zip(edges[::2], edges[1::2])
    ]


def _worst(times: np.ndarray, margin: np.ndarray) -> tuple[dict, int]:
    """Worst (smallest) margin, when, and where it is below zero; and its sample."""
    k = int(np.argmin(margin))
    return {
        "worst_margin": float(margin[k]),
        "worst_time_s": float(times[k]),
        "intervals": intervals(times, margin < 0),
    }, k


def _angle_checks(traj: Trajectory, limits: Limits) -> list[dict]:
    # TODO: velocity and acceleration limits apply to Euler-channel rates, which
    # grow without bound near gimbal lock, so such joints must go unlimited; limits
    # on each joint's angular velocity vector would not, but the limits file has
    # no way yet to name the axes of that vector.
    times, sk = traj.times, traj.skeleton
    angle_deg = np.degrees(traj.angles)  # (T, A)
    vel_deg = np.degrees(traj.angular_vel)
    acc_deg = np.degrees(traj.angular_acc)
    out = []
    for a, (j, col) in enumerate(traj.angle_channels):
        name = sk.names[j]
        channel = sk.channels[j][col - sk.channel_starts()[j]]
        lim = limits.joints.get(name, {}).get(channel[0], AxisLimit())
        curve = angle_deg[:, a]
        entry = {"joint": name, "axis": channel[0], "channel": channel}

        rng: dict = {"limit": None, "worst_margin": None}
        shift = 0.0
        if lim.min_deg is not None:
            centre = 0.5 * (lim.min_deg + lim.max_deg)
            shift = -360.0 * float(np.round((np.median(curve) - centre) / 360.0))
            curve = curve + shift
            margin = np.minimum(curve - lim.min_deg, lim.max_deg - curve)
            rng = {"limit": [lim.min_deg, lim.max_deg], **_worst(times, margin)[0]}
        entry["angle_deg"] = {
            "min": float(curve.min()),
            "max": float(curve.max()),
            "shift": shift,
            **rng,
        }
        for key, values, limit in (
            ("velocity_deg_s", vel_deg[:, a], lim.velocity_deg_s),
            ("acceleration_deg_s2", acc_deg[:, a], lim.acceleration_deg_s2),
        ):
            peak = np.abs(values)
            item: dict = {
                "peak": float(peak.max()),
                "limit": limit,
                "worst_margin": None,
            }
            if limit is not None:
                item.update(_worst(times, limit - peak)[0])
            entry[key] = item
        out.append(entry)
    return out


def relative_margin(item: dict) -> float:
    """An angle, velocity or acceleration item's worst margin as a fraction of its
    limit's size, so items of different joints and units sort together."""
    limit = item["limit"]
    size = limit[1] - limit[0] if isinstance(limit, list) else limit
    return item["worst_margin"] / max(float(size), 1e-9)


def _pair_mask(bones: list[Bone], skeleton, bodies: BodyConfig) -> np.ndarray:
    """(B, B) bool, True for the pairs (i < k) checked for collision."""
    hops = bone_hops(bones, skeleton)
    mask = np.triu(hops > bodies.ignore_within_bones, k=1)
    joint_name = [skeleton.names[b.joint] for b in bones]
    for n1, n2 in bodies.ignore_pairs:
        for i in range(len(bones)):
            for k in range(len(bones)):
                if {joint_name[i], joint_name[k]} == {n1, n2}:
                    mask[i, k] = False
    return mask


def _self_collision(
    traj: Trajectory, bones: list[Bone], limits: Limits, segments: np.ndarray
) -> dict:
    # TODO: clearance is measured at the samples only, so limbs that pass through
    # each other between two samples of a low control rate go unreported; a swept
    # test between samples would catch them at several times the cost.
    pairs = np.argwhere(_pair_mask(bones, traj.skeleton, limits.bodies))  # (P, 2)
    out: dict = {
        "bodies": len(bones),
        "pairs_checked": len(pairs),
        "worst_margin_m": None,
        "colliding_pairs": [],
    }
    if not len(pairs):
        return out
    radius = np.array([b.radius for b in bones])
    seg_i, seg_k = segments[:, pairs[:, 0]], segments[:, pairs[:, 1]]  # (T, P, 2, 3)
    gap = segment_distance(
        seg_i[..., 0, :], seg_i[..., 1, :], seg_k[..., 0, :], seg_k[..., 1, :]
    )  # (T, P)
    clearance = gap - (radius[pairs[:, 0]] + radius[pairs[:, 1]])
    t, p = np.unravel_index(int(np.argmin(clearance)), clearance.shape)
    out.update(
        worst_margin_m=float(clearance[t, p]),
        worst_time_s=float(traj.times[t]),
        worst_pair=[bones[pairs[p, 0]].name, bones[pairs[p, 1]].name],
    )
    for p in np.flatnonzero((clearance < 0).any(axis=0)):
        w, _ = _worst(traj.times, clearance[:, p])
        out["colliding_pairs"].append(
            {
                "bones": [bones[pairs[p, 0]].name, bones[pairs[p, 1]].name],
                "worst_margin_m": w["worst_margin"],
                "worst_time_s": w["worst_time_s"],
                "intervals": w["intervals"],
            }
        )
    out["colliding_pairs"].sort(key=lambda e: e["worst_margin_m"])
    return out


def _ground(
    traj: Trajectory,
    bones: list[Bone],
    segments: np.ndarray,
    body_joints: list[int],
    floor: Floor,
) -> dict:
    names = traj.skeleton.names
    joint_y = traj.world_pos[:, body_joints, 1] - floor.y_m  # (T, K)
    low = np.argmin(joint_y, axis=1)
    w, k = _worst(traj.times, joint_y[np.arange(len(low)), low])
    joints = {
        "worst_margin_m": w["worst_margin"],
        "worst_time_s": w["worst_time_s"],
        "worst_joint": names[body_joints[low[k]]],
        "intervals": w["intervals"],
    }
    out = {
        "floor_y_m": floor.y_m,
        "floor_from": floor.how,
        "joints": joints,
        "capsules": None,
    }
    if bones:
        radius = np.array([b.radius for b in bones])
        cap_y = segments[..., 1].min(axis=-1) - radius - floor.y_m  # (T, B)
        low = np.argmin(cap_y, axis=1)
        w, k = _worst(traj.times, cap_y[np.arange(len(low)), low])
        out["capsules"] = {
            "worst_margin_m": w["worst_margin"],
            "worst_time_s": w["worst_time_s"],
            "worst_bone": bones[low[k]].name,
            "intervals": w["intervals"],
        }
    return out


def _foot_sliding(
    traj: Trajectory, feet: list[int], contact: ContactConfig, floor: Floor
) -> dict:
    # TODO: one height threshold serves every foot joint, and ankles rest higher
    # than toes, so a limits file that lists only toes (as the bundled one does)
    # misses a heel that slides while the toes are lifted.
    times = traj.times
    dt = np.gradient(times) if len(times) > 1 else np.zeros(len(times))
    out: dict = {
        "height_m": contact.height_m,
        "speed_m_s": contact.speed_m_s,
        "max_slide_m_s": contact.max_slide_m_s,
        "feet": [],
    }
    for j in feet:
        height = traj.world_pos[:, j, 1] - floor.y_m
        speed = np.linalg.norm(traj.world_vel[:, j], axis=-1)
        slide = np.linalg.norm(traj.world_vel[:, j, [0, 2]], axis=-1)
        planted = (height < contact.height_m) & (speed < contact.speed_m_s)
        entry = {
            "joint": traj.skeleton.names[j],
            "contact_fraction": float(planted.mean()),
            "peak_slide_m_s": None,
            "slide_distance_m": 0.0,
            "worst_margin_m_s": None,
            "intervals": [],
        }
        if planted.any():
            margin = np.where(planted, contact.max_slide_m_s - slide, np.inf)
            w, _ = _worst(times, margin)
            entry.update(
                peak_slide_m_s=float(slide[planted].max()),
                slide_distance_m=float(np.sum((slide * dt)[planted])),
                worst_margin_m_s=w["worst_margin"],
                worst_time_s=w["worst_time_s"],
                intervals=w["intervals"],
            )
        out["feet"].append(entry)
    return out


def check_motion(
    traj: Trajectory, limits: Limits, bones: list[Bone], floor: Floor, feet: list[int]
) -> dict:
    """The feasibility report of a sampled motion, as plain JSON-ready data.

    Args:
        traj: the motion at the control rate (see :mod:`motionode.preview`).
        limits: joint limits, bodies and contact thresholds.
        bones: capsule bodies (:func:`motionode.meshes.build_bones`).
        floor: the floor plane.
        feet: foot joint indices.

    Returns:
        a dict with ``joints``, ``self_collision``, ``ground``, ``foot_sliding`` and
        a ``summary`` naming what is violated. Margins are positive inside the
        limits; a check with no limit has ``worst_margin`` None.

    Raises:
        ValueError: a position or angle of ``traj`` is not finite.
    """
    for what in ("angles", "angular_vel", "angular_acc", "world_pos", "world_vel"):
        values = getattr(traj, what)
        if not np.isfinite(values).all():
            k = int(np.argwhere(~np.isfinite(values))[0, 0])
            raise ValueError(
                f"trajectory.{what}: non-finite value at t = {traj.times[k]!r} s"
            )
    segments = bone_segments(bones, traj.world_pos, traj.world_rot)  # (T, B, 2, 3)
    body_joints = sorted(
        {b.joint for b in bones} | {b.child for b in bones if b.child >= 0}
    )
    if not body_joints:
        body_joints = list(range(traj.skeleton.num_joints))
    report = {
        "joints": _angle_checks(traj, limits),
        "self_collision": _self_collision(traj, bones, limits, segments),
        "ground": _ground(traj, bones, segments, body_joints, floor),
        "foot_sliding": _foot_sliding(traj, feet, limits.contact, floor),
    }
    report["summary"] = _summary(report)
    logger.info("feasibility: %d checks violated", len(report["summary"]["violated"]))
    return report


def _summary(report: dict) -> dict:
    violated = []
    for e in report["joints"]:
        for key in ("angle_deg", "velocity_deg_s", "acceleration_deg_s2"):
            m = e[key]["worst_margin"]
            if m is not None and m < 0:
                violated.append(f"{key.split('_')[0]} {e['joint']}.{e['axis']}")
    for pair in report["self_collision"]["colliding_pairs"]:
        violated.append(f"collision {pair['bones'][0]} / {pair['bones'][1]}")
    for key in ("joints", "capsules"):
        g = report["ground"][key]
        if g is not None and g["worst_margin_m"] < 0:
            violated.append(f"ground ({key})")
    for foot in report["foot_sliding"]["feet"]:
        m = foot["worst_margin_m_s"]
        if m is not None and m < 0:
            violated.append(f"sliding {foot['joint']}")
    return {"feasible": not violated, "violated": violated}
