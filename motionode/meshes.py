"""Capsule bodies of a posed skeleton: bone layout, clearances and GLB meshes.

Every bone is a capsule, the points within ``radius`` of the segment between two
joint positions. A bone runs from a joint to each of its children, to each of its
End Sites, and, for leaf joints given an extra length, along the joint's own bone
direction (rigs such as Bandai end the head and hands in zero-length End Sites, so
without it they would have no body). A bone takes the radius of the joint it hangs
from, since it moves rigidly with that joint's frame.

Only joints at or below the *base* joint get bodies: a static reference joint above
the pelvis (Bandai's ``joint_Root`` on the floor) is not part of the body, and a
bone from it to the hips would reach through the legs.

Positions are metres in the rig's world frame, Y up. Segment clearance is computed
analytically, so checks need no collision library; meshes use trimesh.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motionode.bvh import Skeleton

logger = logging.getLogger(__name__)

__all__ = [
    "Bone",
    "bone_hops",
    "bone_segments",
    "build_bones",
    "capsule_frame",
    "capsule_mesh",
    "default_radius",
    "pose_scene",
    "segment_distance",
    "write_glb",
]

MIN_LENGTH_M = 1e-6  # bones shorter than a micron have no direction: no body
_EPS = 1e-12


@dataclass(frozen=True)
class Bone:
    """One capsule body.

    Attributes:
        name: ``"<joint>-><child>"``, ``"<joint>->end<k>"`` or ``"<joint>->tip"``.
        joint: index of the joint the bone hangs from (its rigid frame).
        child: index of the joint at the far end, or -1 when the far end is
            ``tip_local`` in ``joint``'s frame.
        tip_local: (3,) float far end in the joint's frame, metres (child == -1).
        radius: capsule radius in metres.
    """

    name: str
    joint: int
    child: int
    tip_local: tuple[float, float, float]
    radius: float


def default_radius(skeleton: Skeleton, units_to_m: float) -> float:
    """Per-rig default capsule radius: 2.5% of the rest-pose extent, in metres."""
    return 0.025 * skeleton.height() * units_to_m


def _subtree(skeleton: Skeleton, base: int) -> set[int]:
    """Joint indices at or below ``base`` (parents come before children)."""
    keep = {base}
    for j, p in enumerate(skeleton.parents):
        if p in keep:
            keep.add(j)
    return keep


def build_bones(
    skeleton: Skeleton,
    units_to_m: float,
    base: int = 0,
    radius: dict[str, float] | None = None,
    default: float | None = None,
    end_length: dict[str, float] | None = None,
) -> list[Bone]:
    """The capsule bodies of a rig, zero-length bones left out.

    Args:
        skeleton: the rig; offsets are in its units.
        units_to_m: metres per rig unit.
        base: joint whose subtree gets bodies (the pelvis of a floating base).
        radius: radius in metres per joint name; bones from other joints take
            ``default``.
        default: radius in metres; None means :func:`default_radius`.
        end_length: bone length in metres for joints with no bone of their own
            (a leaf whose End Sites have no length), along the joint's offset
            direction turned by the joint's own rotation.

    Raises:
        ValueError: a name in ``radius`` or ``end_length`` is not a joint of the rig,
            a radius is not positive, or ``base`` is not a joint index.
    """
    names = skeleton.names
    if not 0 <= base < skeleton.num_joints:
        raise ValueError(
            f"base: expected a joint index in [0, {skeleton.num_joints}), got {base}"
        )
    radius, end_length = dict(radius or {}), dict(end_length or {})
    for what, table in (("radius", radius), ("end_length", end_length)):
        for name, value in table.items():
            if name not in names:
                raise ValueError(
                    f"{what}: {name!r} is not a joint of the rig; "
                    f"joints: {', '.join(names)}"
                )
            if not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"{what}[{name!r}]: expected a positive number of "
                    f"metres, got {value!r}"
                )
    if default is None:
        default = default_radius(skeleton, units_to_m)
    if not (np.isfinite(default) and default > 0):
        raise ValueError(
            f"default radius: expected a positive number of metres, got {default!r}"
        )

    keep = _subtree(skeleton, base)
    bones: list[Bone] = []
    no_tip = (0.0, 0.0, 0.0)
    for c, p in enumerate(skeleton.parents):
        if p in keep:
            bones.append(
                Bone(
                    f"{names[p]}->{names[c]}",
                    int(p),
                    c,
                    no_tip,
                    radius.get(names[p], default),
                )
            )
    for e, p in enumerate(skeleton.end_parents):
        if p in keep:
            tip = tuple(float(v) for v in skeleton.end_offsets[e] * units_to_m)
            bones.append(
                Bone(
                    f"{names[p]}->end{e}",
                    int(p),
                    -1,
                    tip,
                    radius.get(names[p], default),
                )
            )
    for name, length in end_length.items():
        j = names.index(name)
        direction = skeleton.offsets[j]
        norm = float(np.linalg.norm(direction))
        if j not in keep or norm * units_to_m < MIN_LENGTH_M:
            logger.warning(
                "end_length for %s dropped: the joint is above the base "
                "or has no offset direction",
                name,
            )
            continue
        if any(
            b.joint == j and _rest_length(skeleton, b, units_to_m) >= MIN_LENGTH_M
            for b in bones
        ):
            logger.debug("end_length for %s not needed: it has a bone", name)
            continue
        tip = tuple(float(v) for v in direction / norm * length)
        bones.append(Bone(f"{name}->tip", j, -1, tip, radius.get(name, default)))

    # Rest lengths decide: a bone is rigid in its joint's frame, so a zero offset
    # stays zero in every pose (position channels that move joints apart are rare
    # below the base, and a per-pose check in the mesh builder covers them).
    rest = []
    for b in bones:
        if _rest_length(skeleton, b, units_to_m) < MIN_LENGTH_M:
            logger.debug("bone %s has zero length: no body", b.name)
        else:
            rest.append(b)
    return rest


def _rest_length(skeleton: Skeleton, bone: Bone, units_to_m: float) -> float:
    """Length of a bone in metres, from the rig's offsets."""
    tip = (
        skeleton.offsets[bone.child] * units_to_m
        if bone.child >= 0
        else np.asarray(bone.tip_local)
    )
    return float(np.linalg.norm(tip))


def bone_hops(bones: list[Bone], skeleton: Skeleton) -> np.ndarray:
    """(B, B) int, how many bones apart two bones are; 1 when they share a joint."""
    count = len(bones)
    ends = []
    for b in bones:
        ends.append({b.joint, b.child} if b.child >= 0 else {b.joint})
    hops = np.full((count, count), count + 1, dtype=int)
    np.fill_diagonal(hops, 0)
    for i in range(count):
        for k in range(count):
            if i != k and ends[i] & ends[k]:
                hops[i, k] = 1
    # Floyd-Warshall over a few dozen bones is instant and needs no graph library.
    for m in range(count):
        hops = np.minimum(hops, hops[:, m : m + 1] + hops[m : m + 1, :])
    return hops


def bone_segments(
    bones: list[Bone], world_pos: np.ndarray, world_rot: np.ndarray
) -> np.ndarray:
    """Segment ends of every bone.

    Args:
        world_pos: (..., J, 3) float joint positions, metres.
        world_rot: (..., J, 3, 3) float joint rotations.

    Returns:
        (..., B, 2, 3) float64 start and end of each bone, metres.
    """
    joint = np.array([b.joint for b in bones], dtype=int)
    child = np.array([b.child for b in bones], dtype=int)
    tip_local = np.array([b.tip_local for b in bones], dtype=np.float64).reshape(-1, 3)
    start = world_pos[..., joint, :]  # (..., B, 3)
    tip = start + np.einsum("...bij,bj->...bi", world_rot[..., joint, :, :], tip_local)
    end = np.where((child >= 0)[:, None], world_pos[..., np.maximum(child, 0), :], tip)
    return np.stack([start, end], axis=-2)  # (..., B, 2, 3)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den where den > 0, else 0; never warns."""
    ok = den > _EPS
    return np.where(ok, num / np.where(ok, den, 1.0), 0.0)


def segment_distance(
    p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray
) -> np.ndarray:
    """Closest distance between segments p0-p1 and q0-q1.

    Args:
        p0, p1, q0, q1: (..., 3) float segment ends; leading axes broadcast. A
            segment may have zero length (a point), and the two may be parallel.

    Returns:
        (...,) float64 distances, always finite for finite input.
    """
    p0, p1, q0, q1 = (np.asarray(v, dtype=np.float64) for v in (p0, p1, q0, q1))
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a = np.sum(d1 * d1, axis=-1)
    e = np.sum(d2 * d2, axis=-1)
    b = np.sum(d1 * d2, axis=-1)
    c = np.sum(d1 * r, axis=-1)
    f = np.sum(d2 * r, axis=-1)

    # Minimise over s on the infinite lines, clamp, then fit t and refit s: the
    # refit finds the true minimum on the box [0, 1]^2 for any pair of segments.
    denom = a * e - b * b
    s = np.clip(_safe_div(b * f - c * e, denom), 0.0, 1.0)
    s = np.where(e > _EPS, s, np.clip(_safe_div(-c, a), 0.0, 1.0))
    t = _safe_div(b * s + f, e)
    t_clamped = np.clip(t, 0.0, 1.0)
    s = np.where(t == t_clamped, s, np.clip(_safe_div(b * t_clamped - c, a), 0.0, 1.0))
    t = t_clamped
    gap = (p0 + s[..., None] * d1) - (q0 + t[..., None] * d2)
    return np.linalg.norm(gap, axis=-1)


def capsule_frame(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(4, 4) float64 rigid transform taking the +Z axis onto ``end - start``, with
    the origin at the segment's midpoint.

    The rotation is built from an orthonormal frame around the bone direction, so
    bones along +-Z or +-Y, or exactly opposite one another, get proper rotations
    (determinant +1) with no special cases.

    Raises:
        ValueError: the segment is shorter than :data:`MIN_LENGTH_M` or not finite.
    """
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    axis = end - start
    length = float(np.linalg.norm(axis))
    if not (np.isfinite(length) and length >= MIN_LENGTH_M):
        raise ValueError(
            f"segment: expected finite ends at least {MIN_LENGTH_M} m "
            f"apart, got {start.tolist()} to {end.tolist()}"
        )
    z = axis / length
    helper = np.zeros(3)
    helper[int(np.argmin(np.abs(z)))] = 1.0  # the world axis least along the bone
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    frame = np.eye(4)
    frame[:3, :3] = np.stack([x, y, z], axis=1)  # columns: images of X, Y, Z
    frame[:3, 3] = 0.5 * (start + end)
    return frame


def capsule_mesh(start: np.ndarray, end: np.ndarray, radius: float, sections: int = 16):
    """A closed trimesh capsule around the segment, or None if it is zero-length.

    Args:
        start, end: (3,) float segment ends, metres.
        radius: metres, > 0.
        sections: segments around the axis (latitude and longitude counts).

    Raises:
        ImportError: trimesh is not installed.
        ValueError: ``radius`` is not positive or an end is not finite.
    """
    import trimesh

    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: expected a positive number, got {radius!r}")
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    if not (np.isfinite(start).all() and np.isfinite(end).all()):
        raise ValueError(f"segment: non-finite end {start.tolist()} to {end.tolist()}")
    length = float(np.linalg.norm(end - start))
    if length < MIN_LENGTH_M:
        return None
    mesh = trimesh.creation.capsule(
        height=length, radius=radius, count=[sections, sections]
    )
    # Centre it whatever trimesh's own placement convention is.
    mesh.apply_translation(-0.5 * (mesh.bounds[0] + mesh.bounds[1]))
    mesh.apply_transform(capsule_frame(start, end))
    assert np.isfinite(mesh.vertices).all()
    return mesh


def pose_scene(
    bones: list[Bone],
    segments: np.ndarray,
    highlight: set[str] | frozenset[str] = frozenset(),
    sections: int = 16,
):
    """A trimesh Scene with one node and one mesh per bone, named by the bone.

    Args:
        segments: (B, 2, 3) float bone ends of one pose, metres.
        highlight: bone names drawn in red (e.g. bones in collision).

    Raises:
        ValueError: a segment end is not finite.
    """
    import trimesh

    if not np.isfinite(segments).all():
        raise ValueError("segments: non-finite joint position in the pose")
    scene = trimesh.Scene()
    for bone, (start, end) in zip(bones, segments):
        mesh = capsule_mesh(start, end, bone.radius, sections)
        if mesh is None:
            logger.debug("bone %s is zero-length in this pose: no body", bone.name)
            continue
        colour = (220, 60, 50, 255) if bone.name in highlight else (150, 170, 200, 255)
        mesh.visual.face_colors = colour
        scene.add_geometry(mesh, node_name=bone.name, geom_name=bone.name)
    return scene


def write_glb(path: str | os.PathLike, scene) -> None:
    """Write ``scene`` as binary glTF, atomically (temporary file, then rename)."""
    data = scene.export(file_type="glb")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("wrote %s (%d bodies)", path, len(scene.geometry))
