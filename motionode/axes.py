"""Axis and unit conventions of engines and rigs, and exact conversions between them.

A :class:`Convention` names the signed coordinate axis that points up and the one a
character in its rest pose faces (forward). The third semantic direction is the
character's own left; in right-handed coordinates it is ``up x forward``, in
left-handed ones ``-(up x forward)`` (the cross product taken as the usual coordinate
formula). The convention's basis matrix ``C`` (3, 3) has as columns the coordinates
of (left, up, forward), so a point whose semantic components are ``s`` has
coordinates ``C @ s``, and ``det(C)`` is +1 for right-handed and -1 for left-handed
coordinates.

Converting coordinates from ``src`` to ``dst`` is ``p' = k * M @ p`` with

    M = C_dst @ C_src.T        (3, 3), a signed permutation: one +-1 per row and column
    k = src metres per unit / dst metres per unit

``M`` maps the character's up, forward and left in ``src`` onto the same directions
in ``dst``, so the body itself is never mirrored: a left hand stays the left hand.
``det(M) = det(C_dst) * det(C_src)``: +1, a proper rotation, when both sides have
the same handedness; -1 when they differ, because describing one body in coordinates
of the other handedness *is* a reflection of the coordinates. This is what engine
importers do when they negate one axis (X, for a file brought into Unity) and
conjugate every rotation by that reflection; ``M`` is such a flip followed by a
proper rotation.

Rotations follow by conjugation, ``R' = M @ R @ M.T``. Since ``det(R') = det(M)**2 *
det(R) = 1``, a converted rotation is always proper, whatever the handedness change.
For a rotation by angle ``a`` about unit axis ``u``, ``M @ R_u(a) @ M.T`` is the
rotation by ``det(M) * a`` about ``M @ u``: across a handedness change every angle
changes sign (a counter-clockwise turn seen in one system is clockwise in the other).

Why forward kinematics commutes with the conversion: with local rotations ``L'_j = M
L_j M.T`` and local translations ``t'_j = k M t_j``, the world rotations telescope,
``W'_j = W'_p L'_j = M W_p M.T M L_j M.T = M W_j M.T`` (``M.T @ M = I``), and by
induction from the root (``x'_root = k M x_root``) every joint position maps as
``x'_j = x'_p + W'_p t'_j = k M x_p + M W_p M.T k M t_j = k M (x_p + W_p t_j) = k M
x_j``. End sites are translations too and map the same way. :func:`convert_clip`
builds exactly these local transforms.

Profiles (see ``PROFILES``): ``blender`` Z-up, right-handed, metres, facing -Y;
``unity`` Y-up, left-handed, metres, facing +Z; ``unreal`` Z-up, left-handed,
centimetres, facing +X; ``godot`` Y-up, right-handed, metres, facing -Z; ``raw`` the
rig's own axes and unit, which for every BVH rig we have is ``RIG_DEFAULT``: Y-up,
right-handed, facing +Z (the character's left at +X), lengths in the file's unit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from motionode.bvh import POSITION_CHANNELS, ROTATION_CHANNELS, Clip, Skeleton

logger = logging.getLogger(__name__)

__all__ = [
    "PROFILES",
    "RIG_DEFAULT",
    "Convention",
    "axis_matrix",
    "convert_clip",
    "convert_positions",
    "convert_rotations",
    "get_convention",
    "length_scale",
]

SIGNED_AXES = ("+X", "-X", "+Y", "-Y", "+Z", "-Z")


def _axis_vector(axis: str) -> np.ndarray:
    """(3,) float64 unit vector of a signed axis name such as "-Y"."""
    vec = np.zeros(3)
    vec["XYZ".index(axis[1])] = 1.0 if axis[0] == "+" else -1.0
    return vec


def _axis_name(vec: np.ndarray) -> str:
    """Signed axis name of a (3,) unit vector along a coordinate axis."""
    i = int(np.argmax(np.abs(vec)))
    return ("+" if vec[i] > 0 else "-") + "XYZ"[i]


@dataclass(frozen=True)
class Convention:
    """Coordinate convention of a tool or rig.

    Attributes:
        up: signed axis pointing up, one of "+X", "-X", "+Y", "-Y", "+Z", "-Z".
        forward: signed axis a character in its rest pose faces; not along ``up``.
        right_handed: True for right-handed coordinates, False for left-handed.
        unit_m: metres per length unit (1.0 metres, 0.01 centimetres, 0.0254
            inches), or None for the rig's own unit, given at conversion time.
        name: label used in messages and logs.

    Raises:
        ValueError: an axis is not a signed axis name, or up and forward share an
            axis, or ``unit_m`` is not a positive number.
    """

    up: str
    forward: str
    right_handed: bool
    unit_m: float | None
    name: str = "custom"

    def __post_init__(self) -> None:
        for what, axis in (("up", self.up), ("forward", self.forward)):
            if axis not in SIGNED_AXES:
                raise ValueError(
                    f"{what}: expected one of {', '.join(SIGNED_AXES)}, got {axis!r}"
                )
        if self.up[1] == self.forward[1]:
            raise ValueError(
                f"forward: must lie on another axis than up {self.up!r}, "
                f"got {self.forward!r}"
            )
        if self.unit_m is not None and not (
            np.isfinite(self.unit_m) and self.unit_m > 0
        ):
            raise ValueError(
                f"unit_m: expected metres per unit > 0 or None, got {self.unit_m!r}"
            )

    def basis(self) -> np.ndarray:
        """(3, 3) float64 whose columns are the coordinates of left, up, forward."""
        up, forward = _axis_vector(self.up), _axis_vector(self.forward)
        left = np.cross(up, forward) * (1.0 if self.right_handed else -1.0)
        return np.stack([left, up, forward], axis=1)

    @property
    def left(self) -> str:
        """Signed axis of the character's left hand side, e.g. "+X"."""
        return _axis_name(self.basis()[:, 0])


RIG_DEFAULT = Convention("+Y", "+Z", True, None, "raw")

PROFILES: dict[str, Convention] = {
    "blender": Convention("+Z", "-Y", True, 1.0, "blender"),
    "godot": Convention("+Y", "-Z", True, 1.0, "godot"),
    "raw": RIG_DEFAULT,
    "unity": Convention("+Y", "+Z", False, 1.0, "unity"),
    "unreal": Convention("+Z", "+X", False, 0.01, "unreal"),
}


def get_convention(spec: str | Convention) -> Convention:
    """The convention named ``spec`` (case-insensitive), or ``spec`` itself.

    Raises:
        ValueError: ``spec`` names no profile; the message lists the valid names.
    """
    if isinstance(spec, Convention):
        return spec
    try:
        return PROFILES[str(spec).lower()]
    except KeyError:
        raise ValueError(
            f"profile: expected one of {', '.join(sorted(PROFILES))}, got {spec!r}"
        ) from None


def axis_matrix(src: str | Convention, dst: str | Convention) -> np.ndarray:
    """(3, 3) float64 ``M`` taking ``src`` coordinates to ``dst`` coordinates.

    A signed permutation; ``det(M)`` is +1 unless the handedness differs (-1).
    """
    return get_convention(dst).basis() @ get_convention(src).basis().T


def _signed_permutation(
    src: str | Convention, dst: str | Convention
) -> tuple[np.ndarray, np.ndarray]:
    """``perm`` (3,) int and ``sign`` (3,) float with ``(M p)[i] = sign[i] *
    p[perm[i]]``, so conversions are index moves and sign flips, exact in floats."""
    m = axis_matrix(src, dst)
    perm = np.argmax(np.abs(m), axis=1)
    sign = m[np.arange(3), perm]
    return perm, sign


def length_scale(
    src: str | Convention, dst: str | Convention, units_to_m: float | None = None
) -> float:
    """Factor ``k`` that turns ``src`` lengths into ``dst`` lengths.

    Args:
        units_to_m: metres per unit of the rig's own unit, used for a side whose
            ``unit_m`` is None; not needed when both or neither side has one.

    Raises:
        ValueError: ``units_to_m`` is needed and missing, or not positive.
    """
    src, dst = get_convention(src), get_convention(dst)
    if src.unit_m is None and dst.unit_m is None:
        return 1.0
    if units_to_m is not None and not (np.isfinite(units_to_m) and units_to_m > 0):
        raise ValueError(
            f"units_to_m: expected metres per rig unit > 0, got {units_to_m!r}"
        )
    src_m = src.unit_m if src.unit_m is not None else units_to_m
    dst_m = dst.unit_m if dst.unit_m is not None else units_to_m
    if src_m is None or dst_m is None:
        raise ValueError(
            f"units_to_m: converting {src.name} to {dst.name} needs the "
            f"rig's metres per unit (e.g. 0.01 for centimetres), got None"
        )
    return 1.0 if src_m == dst_m else src_m / dst_m


def convert_positions(
    world_pos: np.ndarray,
    src: str | Convention,
    dst: str | Convention,
    units_to_m: float | None = None,
) -> np.ndarray:
    """Positions or offsets from ``src`` to ``dst`` coordinates: ``k * M @ p``.

    Args:
        world_pos: (..., 3) float positions (any leading axes).
        units_to_m: see :func:`length_scale`.

    Returns:
        (..., 3) float64. Without a unit change the result is exact (entries are
        only moved and negated), so converting back gives the input bit for bit.
    """
    perm, sign = _signed_permutation(src, dst)
    scale = length_scale(src, dst, units_to_m)
    out = np.asarray(world_pos, dtype=np.float64)[..., perm] * sign
    return out * scale if scale != 1.0 else out


def convert_rotations(
    world_rot: np.ndarray, src: str | Convention, dst: str | Convention
) -> np.ndarray:
    """Rotation matrices from ``src`` to ``dst`` coordinates: ``M @ R @ M.T``.

    Args:
        world_rot: (..., 3, 3) float rotation matrices acting on column vectors.

    Returns:
        (..., 3, 3) float64 proper rotations (det +1) even when ``M`` is a
        reflection; exact, since entries are only moved and negated.
    """
    perm, sign = _signed_permutation(src, dst)
    rot = np.asarray(world_rot, dtype=np.float64)
    return rot[..., perm, :][..., :, perm] * (sign[:, None] * sign[None, :])


def convert_clip(
    clip: Clip,
    dst: str | Convention,
    src: str | Convention = RIG_DEFAULT,
    units_to_m: float | None = None,
) -> Clip:
    """The clip expressed in ``dst`` coordinates and units.

    Offsets, end sites and position channels become ``k * M @ t``; every rotation
    channel is renamed to its image axis under ``M`` and its angle multiplied by the
    sign of that image times ``det(M)``, which gives local rotations ``M @ L @ M.T``
    exactly. So the new clip's forward kinematics equal :func:`convert_positions` of
    the old clip's, and its Euler angles stay as continuous as they were. A joint
    keeps its number of channels; its rotation order becomes the image of the old
    one (e.g. ZXY under Y-up to Z-up becomes YXZ), position channels stay X, Y, Z.

    Args:
        clip: the clip, in ``src`` coordinates.
        dst, src: profile names or conventions; ``src`` defaults to the BVH rigs'
            own convention (Y-up, right-handed, facing +Z, file units).
        units_to_m: see :func:`length_scale`.

    Raises:
        ValueError: unknown profile, or ``units_to_m`` needed and missing.
    """
    perm, sign = _signed_permutation(src, dst)
    scale = length_scale(src, dst, units_to_m)
    det = float(np.prod(sign) * _permutation_parity(perm))
    # Old axis a goes to new axis image[a], with sign image_sign[a] (inverse of perm).
    image = np.argsort(perm)
    image_sign = sign[image]
    sk = clip.skeleton
    starts = sk.channel_starts()
    motion = np.asarray(clip.motion, dtype=np.float64)

    # Per joint: rename channels, scale and sign their columns.
    channels: list[tuple[str, ...]] = []
    columns: list[np.ndarray] = []
    for j, chans in enumerate(sk.channels):
        renamed: list[tuple[str, np.ndarray]] = []
        for k, name in enumerate(chans):
            axis = "XYZ".index(name[0])
            col = motion[:, starts[j] + k] * image_sign[axis]
            if name in ROTATION_CHANNELS:
                renamed.append((f"{'XYZ'[image[axis]]}rotation", col * det))
            else:
                renamed.append((f"{'XYZ'[image[axis]]}position", col * scale))
        slots = [i for i, (n, _) in enumerate(renamed) if n in POSITION_CHANNELS]
        ordered = sorted((renamed[i] for i in slots), key=lambda nc: nc[0])
        for i, item in zip(slots, ordered):
            renamed[i] = item
        channels.append(tuple(n for n, _ in renamed))
        columns.extend(c for _, c in renamed)

    skeleton = Skeleton(
        list(sk.names),
        sk.parents.copy(),
        convert_positions(sk.offsets, src, dst, units_to_m),
        channels,
        sk.end_parents.copy(),
        convert_positions(sk.end_offsets, src, dst, units_to_m),
    )
    new_motion = (
        np.stack(columns, axis=1) if columns else np.zeros((clip.num_frames, 0))
    )  # (F, C)
    logger.debug(
        "convert_clip %s -> %s: M=%s k=%s",
        get_convention(src).name,
        get_convention(dst).name,
        axis_matrix(src, dst).tolist(),
        scale,
    )
    return Clip(skeleton, new_motion, clip.frame_time, clip.source)


def _permutation_parity(perm: np.ndarray) -> float:
    """+1 for an even permutation of (0, 1, 2), -1 for an odd one."""
    return 1.0 if tuple(perm) in ((0, 1, 2), (1, 2, 0), (2, 0, 1)) else -1.0
