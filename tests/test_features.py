"""Pose features: exact inverse on real clips of every rig, layout, saved statistics."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from motionode.bvh import Clip, local_to_channels, parse_bvh, read_bvh
from motionode.features import FeatureSpec, build_spec, decode, encode, integrate_root
from motionode.rotations import axis_angle_matrix

DATA = Path(__file__).parent / "data"
CLIPS_DIR = Path(__file__).parents[2] / "shared" / "data" / "bvh"
CMU_UNIT = 0.0254 / 0.45  # metres per CMU/ASF length unit
UNITS_TO_M = {
    "bandai": 0.01,
    "cmu": CMU_UNIT,
    "cmu_3dsmax": CMU_UNIT,
    "cmu_cs19": 0.0254,
    "cmu_daz": 0.01,
    "cmu_iclone": 0.01,
}
# Clip, name of the moving root, feature dimension 10 + 6 * (joints below the root).
CLIPS = [
    ("bandai/dataset-1_walk_normal_001.bvh", "Hips", 10 + 6 * 20),
    # joint_Root moves here too (and is held at its median), Hips carries the body.
    ("bandai/dataset-1_dash_normal_001.bvh", "Hips", 10 + 6 * 20),
    ("cmu/02_01.bvh", "Hips", 10 + 6 * 30),
    ("cmu_3dsmax/131_01.bvh", "Hips", 10 + 6 * 30),
    ("cmu_cs19/10_01.bvh", "Hips", 10 + 6 * 18),
    ("cmu_daz/salsa/10.bvh", "hip", 10 + 6 * 42),
    ("cmu_iclone/002_03.bvh", "RL_BoneRoot", 10 + 6 * 100),
    ("cmu_iclone/006_08.bvh", "CC_Base_Hip", 10 + 6 * 99),
]


def shared_clip(rel: str) -> tuple[Clip, float]:
    path = CLIPS_DIR / rel
    if not path.exists():
        pytest.skip(
            f"shared clip not found: {path} (clone with shared/ beside the repo)"
        )
    return read_bvh(path), UNITS_TO_M[rel.split("/")[0]]


def below(clip: Clip, root: int) -> np.ndarray:
    """Mask (J + E,) of the root, the joints under it and their end sites."""
    sk = clip.skeleton
    inside = np.zeros(sk.num_joints, dtype=bool)
    for j in range(sk.num_joints):  # parents come first
        inside[j] = j == root or (sk.parents[j] >= 0 and inside[sk.parents[j]])
    return np.concatenate([inside, inside[sk.end_parents]])


def position_error(clip: Clip, motion: np.ndarray) -> np.ndarray:
    """(J + E,) largest distance per joint and end site, in file units."""
    decoded = Clip(clip.skeleton, motion, clip.frame_time)
    diff = decoded.world_positions(True) - clip.world_positions(True)
    return np.linalg.norm(diff, axis=-1).max(axis=0)


# ---------------------------------------------------------------- exact inverse


@pytest.mark.parametrize(
    "rel, root_name, dim",
    CLIPS,
    ids=[c[0].split("/")[0] + "/" + Path(c[0]).stem for c in CLIPS],
)
def test_encode_decode_reproduces_joint_positions(rel, root_name, dim):
    clip, units = shared_clip(rel)
    sk = clip.skeleton
    spec = build_spec([clip], units)
    assert sk.names[spec.root] == root_name
    assert spec.dim == dim and spec.units_to_m == units

    feats = encode(spec, clip)
    assert feats.pose.shape == (clip.num_frames, dim)
    height = sk.height()
    err = position_error(clip, decode(spec, feats.pose, feats.root_xz, feats.heading))
    body = below(clip, spec.root)
    assert err[body].max() <= 1e-3 * height
    assert err[body].max() <= 1e-6 * height  # in fact about 1e-14

    # The root trajectory integrated back from velocities and turn rates.
    xz, heading = integrate_root(
        feats.pose, feats.times, feats.root_xz[0], feats.heading[0]
    )
    np.testing.assert_allclose(xz, feats.root_xz, rtol=0, atol=1e-9 * height)
    np.testing.assert_allclose(heading, feats.heading, rtol=0, atol=1e-9)
    err = position_error(clip, decode(spec, feats.pose, xz, heading))
    assert err[body].max() <= 1e-6 * height

    # Joints above the root are held at their median; exact wherever they are static.
    starts = sk.channel_starts()
    for j in np.flatnonzero(~body[: sk.num_joints]):
        cols = slice(starts[j], starts[j] + len(sk.channels[j]))
        if np.ptp(clip.motion[:, cols], axis=0).max(initial=0.0) == 0.0:
            assert err[j] <= 1e-6 * height, sk.names[j]


def test_moving_top_joint_above_moving_hips():
    # joint_Root slides 2.7 m in this clip; the body must still come back exactly.
    clip, units = shared_clip("bandai/dataset-1_dash_normal_001.bvh")
    spec = build_spec([clip], units)
    assert np.ptp(clip.motion[:, 2]) == pytest.approx(272.82)
    feats = encode(spec, clip)
    motion = decode(spec, feats.pose, feats.root_xz, feats.heading)
    held = np.median(clip.motion[:, :6], axis=0)
    np.testing.assert_array_equal(motion[:, :6], np.broadcast_to(held, (20, 6)))
    err = position_error(clip, motion)
    assert err[1:].max() <= 1e-6 * clip.skeleton.height()


def test_spec_over_several_clips_keeps_each_trajectory():
    # One Bandai clip with a sliding joint_Root among ordinary ones must not make
    # joint_Root the feature root: that would drop every clip's Hips translation.
    walk, units = shared_clip("bandai/dataset-1_walk_normal_001.bvh")
    dash, _ = shared_clip("bandai/dataset-1_dash_normal_001.bvh")
    spec = build_spec([walk, dash], units)
    assert walk.skeleton.names[spec.root] == "Hips"
    for clip in (walk, dash):
        feats = encode(spec, clip)
        err = position_error(
            clip, decode(spec, feats.pose, feats.root_xz, feats.heading)
        )
        # Bone lengths differ between the two files by up to 0.04 cm (one median kept).
        assert err[1:].max() <= 1e-3 * clip.skeleton.height()


def test_decode_continues_from_previous_row():
    clip, units = shared_clip("cmu/05_06.bvh")  # root angles wrap past 180 degrees
    spec = build_spec([clip], units)
    feats = encode(spec, clip)
    full = decode(spec, feats.pose, feats.root_xz, feats.heading)
    rot = [
        k
        for k, c in enumerate(c for chans in clip.skeleton.channels for c in chans)
        if c.endswith("rotation")
    ]
    for cut in (100, 400, 700):
        rest = decode(
            spec,
            feats.pose[cut:],
            feats.root_xz[cut:],
            feats.heading[cut:],
            previous=full[cut - 1],
        )
        assert np.abs(rest[0, rot] - full[cut - 1, rot]).max() <= 180.0
        np.testing.assert_allclose(rest, full[cut:], atol=1e-9)


# ---------------------------------------------------------------------- layout

# Hips moves +X at 10 units/s facing +X (yaw 90); Chest turned 90 degrees about Z.
WALK = (DATA / "two_joints.bvh").read_text(encoding="utf-8").split("MOTION")[0] + (
    "MOTION\nFrames: 3\nFrame Time: 0.1\n"
    "0 90 0 0 0 90 90 0 0\n1 90 0 0 0 90 90 0 0\n2 90 0 0 0 90 90 0 0\n"
)


def test_feature_layout_hand_values():
    clip = parse_bvh(WALK, "walk")
    spec = build_spec([clip], 0.01)
    assert (spec.root, spec.rot_joints, spec.dim) == (0, [1], 16)
    # Heading is measured on the root's X axis, the most horizontal one; with yaw 90
    # it points along -Z, heading pi.
    assert spec.forward_axis == 0
    feats = encode(spec, clip)
    np.testing.assert_allclose(feats.heading, math.pi, atol=1e-12)
    np.testing.assert_allclose(feats.root_xz, [[0, 0], [1, 0], [2, 0]], atol=1e-12)
    np.testing.assert_allclose(feats.times, [0.0, 0.1, 0.2], atol=1e-12)
    want = [
        90,  # root height
        -10,
        0,  # velocity (x, z) in the heading frame: Ry(-pi) (10, 0, 0)
        0,  # turn rate
        0,
        0,
        1,
        0,
        1,
        0,  # root without heading, Ry(-90): columns (0,0,1), (0,1,0)
        0,
        1,
        0,
        -1,
        0,
        0,
    ]  # Chest Rz(90): columns (0,1,0), (-1,0,0)
    np.testing.assert_allclose(feats.pose, np.tile(want, (3, 1)), atol=1e-12)


def yawed(clip: Clip, degrees: float, shift: tuple[float, float]) -> Clip:
    """The clip turned about the vertical axis and moved on the ground."""
    local_rot, local_pos = clip.local_transforms()
    turn = axis_angle_matrix(1, math.radians(degrees))
    local_rot[:, 0] = turn @ local_rot[:, 0]
    local_pos[:, 0] = local_pos[:, 0] @ turn.T + [shift[0], 0.0, shift[1]]
    motion = local_to_channels(clip.skeleton, local_rot, local_pos)
    return Clip(clip.skeleton, motion, clip.frame_time, clip.source)


@pytest.mark.parametrize("source", ["two_joints", "cmu/02_01.bvh"])
def test_features_ignore_where_the_character_stands_and_faces(source):
    if source == "two_joints":
        clip, units = read_bvh(DATA / "two_joints.bvh"), 0.01
        clip.motion[:, 5] = [0, 30, 75]  # some turning, so heading changes
    else:
        clip, units = shared_clip(source)
    spec = build_spec([clip], units)
    feats = encode(spec, clip)
    moved = encode(spec, yawed(clip, 137.0, (250.0, -40.0)))
    np.testing.assert_allclose(moved.pose, feats.pose, atol=1e-9)
    turn = moved.heading - feats.heading - math.radians(137.0)
    np.testing.assert_allclose((turn + math.pi) % (2 * math.pi) - math.pi, 0, atol=1e-9)

    # Speed and turn rate are what the root trajectory says, last frame repeated.
    dt = np.diff(feats.times)
    speed = np.linalg.norm(np.diff(feats.root_xz, axis=0), axis=1) / dt
    np.testing.assert_allclose(
        np.hypot(feats.pose[:-1, 1], feats.pose[:-1, 2]), speed, atol=1e-9
    )
    np.testing.assert_allclose(
        feats.pose[:-1, 3], np.diff(feats.heading) / dt, atol=1e-9
    )
    np.testing.assert_array_equal(feats.pose[-1, 1:4], feats.pose[-2, 1:4])


# ------------------------------------------------------------------ statistics


def test_normalisation_statistics_saved_and_restored():
    clips = [read_bvh(DATA / "two_joints.bvh"), read_bvh(DATA / "two_joints.bvh")]
    clips[1].motion[:, 0] *= -3.0
    clips[1].motion[:, 6] += 45.0
    spec = build_spec(clips, 0.01)
    pose = np.concatenate([encode(spec, c).pose for c in clips])
    np.testing.assert_allclose(spec.mean, pose.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(spec.std, np.maximum(pose.std(axis=0), 1e-3), atol=1e-12)
    assert min(spec.std) == 1e-3  # root height never changes: the floor applies

    saved = json.dumps(spec.to_dict())
    restored = FeatureSpec.from_dict(json.loads(saved))
    assert restored == spec
    np.testing.assert_array_equal(
        encode(restored, clips[1]).pose, encode(spec, clips[1]).pose
    )
    z = restored.normalize(pose)
    np.testing.assert_allclose(
        z.mean(axis=0)[np.asarray(spec.std) > 1e-3], 0, atol=1e-9
    )
    np.testing.assert_allclose(restored.denormalize(z), pose, atol=1e-12)

    data = json.loads(saved)
    data["extra"] = 1
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        FeatureSpec.from_dict(data)


def test_statistics_on_a_real_rig():
    clip, units = shared_clip("cmu_cs19/10_01.bvh")
    spec = build_spec([clip], units)
    restored = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec
    pose = encode(restored, clip).pose
    np.testing.assert_allclose(restored.mean, pose.mean(axis=0), atol=1e-9)
    assert restored.units_to_m == 0.0254
    assert restored.skel().names == clip.skeleton.names


def test_build_spec_rejects_mixed_rigs():
    clip = read_bvh(DATA / "two_joints.bvh")
    with pytest.raises(ValueError, match="at least one training clip"):
        build_spec([], 0.01)
    renamed = read_bvh(DATA / "two_joints.bvh")
    renamed.skeleton.names = ["Hips", "Torso"]  # one rig, named otherwise: fine
    assert build_spec([clip, renamed], 0.01).dim == build_spec([clip], 0.01).dim
    other = read_bvh(DATA / "two_joints.bvh")
    other.skeleton.channels[1] = ("Xrotation", "Yrotation", "Zrotation")[::-1]
    with pytest.raises(ValueError, match="different skeleton.*channels"):
        build_spec([clip, other], 0.01)
