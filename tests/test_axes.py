"""Axis and unit conventions: exact matrices, round trips, and real clips whose
converted forward kinematics equal their converted positions."""

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

from motionode import axes
from motionode.axes import (
    PROFILES,
    RIG_DEFAULT,
    Convention,
    axis_matrix,
    convert_clip,
    convert_positions,
    convert_rotations,
    get_convention,
    length_scale,
)
from motionode.bvh import Clip, read_bvh, write_bvh
from motionode.rotations import axis_angle_matrix

CLIPS_DIR = Path(__file__).parents[2] / "shared" / "data" / "bvh"
MISSING = f"shared clips not found at {CLIPS_DIR} (clone with shared/ beside the repo)"

# One clip per rig with the rig's metres per file unit and the joints that show its
# directions in the clip's first frame, where the actor stands upright facing the
# rig's forward: head, left hip, right hip, a foot, and that foot's toe ("END": the
# foot's End Site; None: nothing shows forward, as the 19-joint rig's feet end
# straight down).
RIGS = {
    "bandai": (
        "bandai/dataset-1_bow_normal_001.bvh",
        0.01,
        ("Head", "UpperLeg_L", "UpperLeg_R", "Foot_L", "Toes_L"),
    ),
    "cmu": (
        "cmu/01_01.bvh",
        0.0254 / 0.45,
        ("Head", "LeftUpLeg", "RightUpLeg", "LeftFoot", "LeftToeBase"),
    ),
    "cmu_3dsmax": (
        "cmu_3dsmax/131_02.bvh",
        0.0254 / 0.45,
        ("Head", "LeftHip", "RightHip", "LeftAnkle", "LeftToe"),
    ),
    "cmu_cs19": (
        "cmu_cs19/10_01.bvh",
        0.0254,
        ("Head", "LeftHip", "RightHip", "LeftAnkle", None),
    ),
    "cmu_daz": (
        "cmu_daz/salsa/10.bvh",
        0.01,
        ("head", "lThigh", "rThigh", "lFoot", "END"),
    ),
    "cmu_iclone": (
        "cmu_iclone/006_02.bvh",
        0.01,
        (
            "CC_Base_Head",
            "CC_Base_L_Thigh",
            "CC_Base_R_Thigh",
            "CC_Base_L_Foot",
            "CC_Base_L_ToeBase",
        ),
    ),
}
# (up, forward, left, right_handed, metres per unit) as each engine documents it.
DOCUMENTED = {
    "blender": ("+Z", "-Y", "+X", True, 1.0),
    "godot": ("+Y", "-Z", "-X", True, 1.0),
    "raw": ("+Y", "+Z", "+X", True, None),
    "unity": ("+Y", "+Z", "-X", False, 1.0),
    "unreal": ("+Z", "+X", "-Y", False, 0.01),
}
# Every axis-aligned convention: 6 up axes x 4 forward axes x 2 handednesses.
ALL_CONVENTIONS = [
    Convention(up, fwd, rh, 1.0, f"{up}{fwd}{'R' if rh else 'L'}")
    for up, fwd, rh in itertools.product(
        axes.SIGNED_AXES, axes.SIGNED_AXES, (True, False)
    )
    if up[1] != fwd[1]
]


def unit(axis: str) -> np.ndarray:
    vec = np.zeros(3)
    vec["XYZ".index(axis[1])] = 1.0 if axis[0] == "+" else -1.0
    return vec


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3, 3) proper rotations from normalised random quaternions."""
    q = rng.normal(size=(n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
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
        axis=1,
    )  # (n, 3, 3)


def read_rig(rig: str, frames: int | None = 40) -> Clip:
    if not CLIPS_DIR.is_dir():
        pytest.skip(MISSING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some headers miscount their frames
        clip = read_bvh(CLIPS_DIR / RIGS[rig][0])
    if frames is not None:
        clip = Clip(clip.skeleton, clip.motion[:frames], clip.frame_time, clip.source)
    return clip


# ------------------------------------------------------------------ profiles


def test_all_is_pinned():
    assert sorted(axes.__all__) == sorted(
        [
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
    )


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_profile_axes_as_documented(name):
    up, forward, left, right_handed, unit_m = DOCUMENTED[name]
    conv = PROFILES[name]
    assert (conv.up, conv.forward, conv.left, conv.right_handed, conv.unit_m) == (
        up,
        forward,
        left,
        right_handed,
        unit_m,
    )

    # The rig's up (+Y), forward (+Z) and left (+X) land on the profile's axes.
    m = axis_matrix(RIG_DEFAULT, name)
    assert np.array_equal(m @ [0, 1, 0], unit(up))
    assert np.array_equal(m @ [0, 0, 1], unit(forward))
    assert np.array_equal(m @ [1, 0, 0], unit(left))


def test_unknown_profile_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_convention("maya")
    msg = str(info.value)
    assert "'maya'" in msg
    for name in PROFILES:
        assert name in msg
    assert get_convention("Blender") is PROFILES["blender"]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"up": "Y", "forward": "+Z"}, "up"),
        ({"up": "+Y", "forward": "-Y"}, "forward"),
        ({"up": "+Y", "forward": "+Z", "unit_m": 0.0}, "unit_m"),
    ],
)
def test_bad_convention_names_the_field(kwargs, word):
    args = {"right_handed": True, "unit_m": 1.0} | kwargs
    with pytest.raises(ValueError, match=word):
        Convention(**args)


def test_units_to_m_needed_only_for_the_rigs_own_unit():
    with pytest.raises(ValueError, match="units_to_m"):
        length_scale("raw", "blender")
    with pytest.raises(ValueError, match="units_to_m"):
        length_scale("raw", "unity", units_to_m=-1.0)
    assert length_scale("raw", "raw") == 1.0
    assert length_scale("raw", "unreal", units_to_m=0.01) == 1.0
    assert length_scale("raw", "blender", units_to_m=0.0254) == 0.0254
    assert length_scale("blender", "unreal") == 100.0
    assert length_scale("unreal", "raw", units_to_m=0.0254) == pytest.approx(
        0.01 / 0.0254
    )


# ------------------------------------------------------------------ matrices


@pytest.mark.parametrize("src", ALL_CONVENTIONS, ids=lambda c: c.name)
def test_matrix_is_signed_permutation_proper_unless_handedness_changes(src):
    for dst in ALL_CONVENTIONS:
        m = axis_matrix(src, dst)
        assert np.array_equal(np.abs(m).sum(axis=0), np.ones(3))
        assert np.array_equal(np.abs(m).sum(axis=1), np.ones(3))
        assert np.array_equal(m @ m.T, np.eye(3))
        det = round(np.linalg.det(m))
        assert det == (1 if src.right_handed == dst.right_handed else -1)
        # Semantic directions are preserved: the body is never mirrored.
        assert np.array_equal(m @ src.basis(), dst.basis())


def test_rotations_stay_proper_and_conjugate_exactly():
    rng = np.random.default_rng(0)
    rot = random_rotations(rng, 64)
    pos = rng.normal(size=(64, 3))
    for src, dst in itertools.product(PROFILES.values(), repeat=2):
        m = axis_matrix(src, dst)
        out = convert_rotations(rot, src, dst)
        assert np.allclose(np.linalg.det(out), 1.0, rtol=0, atol=1e-12)
        assert np.array_equal(out, m @ rot @ m.T)
        # A rotated point converts like the point it was rotated from.
        rotated = np.einsum("nij,nj->ni", rot, pos)
        assert np.allclose(
            convert_positions(rotated, src, dst, units_to_m=1.0),
            np.einsum("nij,nj->ni", out, convert_positions(pos, src, dst, 1.0)),
            rtol=0,
            atol=1e-12,
        )
        assert np.array_equal(convert_rotations(out, dst, src), rot)


def test_handedness_change_reverses_turns():
    # A quarter turn about up, seen in left-handed Unity, is a quarter turn the
    # other way; in right-handed Godot it is the same turn.
    turn = axis_angle_matrix(1, np.pi / 2)
    assert np.allclose(
        convert_rotations(turn, "raw", "unity"),
        axis_angle_matrix(1, -np.pi / 2),
        atol=1e-15,
    )
    assert np.allclose(convert_rotations(turn, "raw", "godot"), turn, atol=1e-15)


@pytest.mark.parametrize("dst", sorted(PROFILES))
def test_positions_round_trip(dst):
    rng = np.random.default_rng(1)
    pos = rng.normal(scale=100.0, size=(7, 5, 3))
    for src in PROFILES:
        same_unit = length_scale(src, dst, units_to_m=1.0) == 1.0
        there = convert_positions(pos, src, dst, units_to_m=1.0)
        back = convert_positions(there, dst, src, units_to_m=1.0)
        if same_unit:
            assert np.array_equal(back, pos)  # only moves and sign flips
        else:
            # Two roundings of a scale and its inverse: at most a few ulps.
            assert np.allclose(back, pos, rtol=1e-15, atol=0)
        axes_only = convert_positions(pos, src, dst, units_to_m=1.0) / length_scale(
            src, dst, units_to_m=1.0
        )
        assert np.allclose(axes_only, pos @ axis_matrix(src, dst).T, rtol=1e-15, atol=0)


# ------------------------------------------------------------------ real clips


@pytest.mark.parametrize("rig", sorted(RIGS))
@pytest.mark.parametrize("dst", sorted(PROFILES))
def test_converted_clip_fk_equals_converted_positions(rig, dst):
    clip = read_rig(rig)
    units_to_m = RIGS[rig][1]
    converted = convert_clip(clip, dst, units_to_m=units_to_m)
    want = convert_positions(clip.world_positions(True), RIG_DEFAULT, dst, units_to_m)
    got = converted.world_positions(True)
    scale = length_scale(RIG_DEFAULT, dst, units_to_m)
    tol = 1e-12 * clip.skeleton.height() * scale
    err = np.abs(got - want).max()
    assert err <= tol, f"{rig} -> {dst}: FK differs by {err} (allowed {tol})"

    # Rotations convert by conjugation and every joint keeps its channel count.
    sk, new = clip.skeleton, converted.skeleton
    assert [len(c) for c in new.channels] == [len(c) for c in sk.channels]
    assert new.names == sk.names and np.array_equal(new.parents, sk.parents)
    old_rot, _ = clip.local_transforms()
    new_rot, _ = converted.local_transforms()
    assert np.allclose(
        new_rot, convert_rotations(old_rot, RIG_DEFAULT, dst), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("rig", sorted(RIGS))
def test_clip_round_trip_through_a_left_handed_engine(rig, tmp_path):
    clip = read_rig(rig)
    units_to_m = RIGS[rig][1]
    unreal = convert_clip(clip, "unreal", units_to_m=units_to_m)
    path = tmp_path / "unreal.bvh"
    write_bvh(path, unreal)
    again = read_bvh(path)
    assert again.skeleton.channels == unreal.skeleton.channels
    assert np.array_equal(again.motion, unreal.motion)

    back = convert_clip(again, RIG_DEFAULT, src="unreal", units_to_m=units_to_m)
    assert back.skeleton.channels == clip.skeleton.channels
    assert np.allclose(back.motion, clip.motion, rtol=1e-14, atol=1e-12)
    assert np.allclose(back.skeleton.offsets, clip.skeleton.offsets, rtol=1e-14, atol=0)


@pytest.mark.parametrize("rig", sorted(RIGS))
def test_real_rigs_face_the_documented_axes(rig):
    clip = read_rig(rig, frames=1)
    sk = clip.skeleton
    head, left, right, foot, toe = RIGS[rig][2]
    head, left, right, foot = (sk.index(n) for n in (head, left, right, foot))
    pos = clip.world_positions(True)[0]  # (J + E, 3)
    if toe is None:
        forward = np.full(3, np.nan)
    else:
        if toe == "END":
            tip = sk.num_joints + list(sk.end_parents).index(foot)
        else:
            tip = sk.index(toe)
        forward = pos[tip] - pos[foot]
        forward[1] = 0.0  # the toe points forward and down: keep the level part
    body = np.stack([pos[head] - pos[foot], pos[left] - pos[right], forward])

    for name, conv in PROFILES.items():
        up, lft, fwd = convert_positions(body, RIG_DEFAULT, conv, RIGS[rig][1])
        for what, vec, want in (
            ("up", up, conv.up),
            ("left", lft, conv.left),
            ("forward", fwd, conv.forward),
        ):
            if np.isnan(vec).any():
                continue
            i = int(np.argmax(np.abs(vec)))
            got = ("+" if vec[i] > 0 else "-") + "XYZ"[i]
            assert got == want, f"{rig} in {name}: body {what} is {got}, not {want}"
