"""Robot previews: control-rate export, feasibility checks, capsule meshes, pictures."""

import argparse
import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from motionode import feasibility, meshes, pictures, preview
from motionode.bvh import Clip, Skeleton, channels_to_local, read_bvh
from motionode.feasibility import Limits, check_motion, find_floor, parse_limits
from motionode.generate import MotionModel, assets_dir
from motionode.kinematics import forward_kinematics
from motionode.meshes import build_bones, capsule_frame, capsule_mesh, segment_distance
from motionode.preview_cli import add_parser

CLIPS = assets_dir() / "clips"
WALK = CLIPS / "dataset-1_walk_normal_001.bvh"
BUNDLED_LIMITS = assets_dir() / "limits" / "bandai_human.json"
SHARED = Path(__file__).parents[2] / "shared" / "data" / "bvh"
MISSING = f"shared clips not found at {SHARED} (clone with shared/ beside the repo)"
SOURCE = "clip:dataset-1_walk_normal_001"


def shared(rel: str, *values):
    """A shared clip and more values as a test parameter, skipped with a reason when
    the clip is absent."""
    path = SHARED / rel
    return pytest.param(
        path,
        *values,
        id=rel,
        marks=() if path.exists() else pytest.mark.skip(reason=MISSING),
    )


@pytest.fixture(scope="module")
def model() -> MotionModel:
    return MotionModel.load()


def check(traj, limits=None, floor="zero"):
    """The feasibility report of ``traj`` the way write_preview makes it."""
    limits = limits or Limits()
    cfg = limits.bodies
    bones = build_bones(
        traj.skeleton,
        traj.units_to_m,
        traj.base,
        cfg.radius_m,
        cfg.default_radius_m,
        cfg.end_length_m,
    )
    feet = feasibility.foot_joints(traj.skeleton, limits.contact, traj.base)
    return check_motion(traj, limits, bones, find_floor(traj, floor, feet), feet), bones


def read_csv(path):
    """Comment lines, column names and the (T, K) table of an exported CSV."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    comments = [ln for ln in lines if ln.startswith("#")]
    rest = lines[len(comments) :]
    names = next(csv.reader([rest[0]]))
    table = np.array([[float(v) for v in row.split(",")] for row in rest[1:]])
    return comments, names, table


def test_public_names_are_pinned():
    assert preview.__all__ == [
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
    assert pictures.__all__ == ["contact_sheet", "plot_curves"]
    assert feasibility.__all__ == [
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
    assert meshes.__all__ == [
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


# ---------------------------------------------------------------------------- limits


def test_bundled_limits_fit_the_bundled_rig_and_pass_its_clips():
    limits = feasibility.load_limits(BUNDLED_LIMITS)
    assert "Bandai" in limits.description
    for path in sorted(CLIPS.glob("*.bvh")):
        traj = preview.sample_clip(read_bvh(path))
        limits.check_rig(traj.skeleton)
        report, _ = check(traj, limits)
        over = [
            v
            for v in report["summary"]["violated"]
            if v.split()[0] in ("angle", "velocity", "acceleration")
        ]
        assert not over, f"{path.name}: {over}"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (
            {"joints": {"Hips": {"range_deg": {"X": [10, -10]}}}},
            "joints.Hips.range_deg.X: expected [min, max] degrees with min <= max",
        ),
        (
            {"joints": {"Hips": {"range_deg": {"W": [0, 1]}}}},
            "expected axis 'X', 'Y' or",
        ),
        (
            {"joints": {"Hips": {"max_velocity_deg_s": -5}}},
            "joints.Hips.max_velocity_deg_s.X: expected a positive number, got -5",
        ),
        ({"bodies": {"radius": {}}}, "bodies: unknown keys ['radius']"),
        (
            {"contact": {"feet": "Toes_L"}},
            "contact.feet: expected a list of joint names",
        ),
        ({"format": "other/2"}, "format: expected 'motionode-limits/1', got 'other/2'"),
        ({"joints": []}, "joints: expected an object, got list"),
    ],
)
def test_bad_limits_name_the_entry_and_value(data, needle):
    with pytest.raises(ValueError, match="lim.json: ") as info:
        parse_limits(data, "lim.json")
    assert needle in str(info.value)


def test_limits_that_do_not_fit_the_rig_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "joints": {\n    "Knee": {"range_deg": {"X": [0, 1]},}\n }\n}')
    with pytest.raises(ValueError, match=r"bad\.json:3: expected JSON"):
        feasibility.load_limits(bad)
    skeleton = read_bvh(WALK).skeleton
    with pytest.raises(ValueError, match="'Knee' is not a joint of the rig"):
        parse_limits({"joints": {"Knee": {}}}, "x").check_rig(skeleton)
    z_only = Skeleton(
        skeleton.names,
        skeleton.parents,
        skeleton.offsets,
        [("Zrotation",)] * skeleton.num_joints,
    )
    with pytest.raises(ValueError, match="axis 'X' has no channel"):
        Limits(joints={"Hips": {"X": feasibility.AxisLimit(0, 1)}}).check_rig(z_only)


# ---------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("path", "joint", "channel", "units"),
    [
        pytest.param(WALK, "LowerLeg_L", "Yrotation", 0.01, id="bundled-walk"),
        shared("cmu/02_01.bvh", "LeftLeg", "Xrotation", 0.0254 / 0.45),
    ],
)
def test_over_limit_joint_is_reported_at_exactly_its_frames(
    path, joint, channel, units
):
    clip = read_bvh(path)
    sk = clip.skeleton
    col = sk.channel_starts()[sk.index(joint)] + sk.channels[sk.index(joint)].index(
        channel
    )
    traj = preview.sample_clip(clip, units_to_m=units)
    curve = traj.rows[:, col]
    lo, hi = float(curve.min()) - 1.0, float(curve.max()) + 1.0
    first, last = len(curve) // 3, len(curve) // 3 + 19
    motion = clip.motion.copy()
    motion[first : last + 1, col] = hi + 12.5  # 12.5 degrees over, for 20 frames
    edited = Clip(sk, motion, clip.frame_time, "edited")
    limits = parse_limits({"joints": {joint: {"range_deg": {channel[0]: [lo, hi]}}}})

    report, _ = check(preview.sample_clip(edited, units_to_m=units), limits)
    entry = next(
        e for e in report["joints"] if e["joint"] == joint and e["channel"] == channel
    )
    fps = clip.fps
    np.testing.assert_allclose(
        entry["angle_deg"]["intervals"], [[first / fps, last / fps]], rtol=0, atol=1e-12
    )
    assert entry["angle_deg"]["worst_margin"] == pytest.approx(-12.5, abs=1e-9)
    assert first / fps <= entry["angle_deg"]["worst_time_s"] <= last / fps
    angles = [v for v in report["summary"]["violated"] if v.startswith("angle")]
    assert angles == [f"angle {joint}.{channel[0]}"]


def test_foot_pushed_under_the_floor_reports_its_depth():
    clip = read_bvh(WALK)
    sk = clip.skeleton
    hips = sk.index("Hips")
    col = sk.channel_starts()[hips] + sk.channels[hips].index("Yposition")
    depth_cm, first, last = 9.0, 50, 69
    motion = clip.motion.copy()
    motion[first : last + 1, col] -= depth_cm
    traj = preview.sample_clip(Clip(sk, motion, clip.frame_time, "sunk"))
    report, bones = check(traj)

    # Expected from the untouched clip: every body joint drops by the same amount.
    body = sorted({b.joint for b in bones} | {b.child for b in bones if b.child >= 0})
    lowest = clip.world_positions()[:, body, 1].min(axis=1) * 0.01  # (F,) metres
    lowest[first : last + 1] -= depth_cm * 0.01
    ground = report["ground"]["joints"]
    assert (
        lowest[first : last + 1].max()
        < 0
        < np.delete(lowest, range(first, last + 1)).min()
    )
    assert ground["worst_margin_m"] == pytest.approx(lowest.min(), abs=1e-12)
    assert ground["worst_joint"] in ("Toes_L", "Toes_R")
    np.testing.assert_allclose(
        ground["intervals"], [[first / 30, last / 30]], atol=1e-12
    )
    # Capsules reach below their joints by their radius.
    capsules = report["ground"]["capsules"]
    assert (
        capsules["worst_margin_m"]
        <= ground["worst_margin_m"] - min(b.radius for b in bones) + 1e-12
    )
    assert "ground (joints)" in report["summary"]["violated"]


def test_floor_from_the_feet_and_sliding_contacts():
    traj = preview.sample_clip(read_bvh(WALK))
    limits = feasibility.load_limits(BUNDLED_LIMITS)
    feet = feasibility.foot_joints(traj.skeleton, limits.contact, traj.base)
    floor = find_floor(traj, "feet", feet)
    first = traj.times <= 0.5
    assert floor.y_m == pytest.approx(traj.world_pos[first][:, feet, 1].min())
    assert "first 0.5 s" in floor.how
    report, _ = check(traj, limits, floor="feet")
    assert report["ground"]["floor_y_m"] == floor.y_m
    for foot in report["foot_sliding"]["feet"]:
        assert 0.2 < foot["contact_fraction"] < 0.8  # a walk: each foot down half
        assert foot["peak_slide_m_s"] < limits.contact.speed_m_s


def test_intervals_are_first_and_last_times_of_each_run():
    times = np.arange(6) / 4
    bad = np.array([1, 1, 0, 1, 0, 1], dtype=bool)
    assert feasibility.intervals(times, bad) == [
        [0.0, 0.25],
        [0.75, 0.75],
        [1.25, 1.25],
    ]
    assert feasibility.intervals(times, ~np.ones(6, dtype=bool)) == []


def test_a_single_sample_previews_without_nan(tmp_path):
    pytest.importorskip("trimesh", reason="GLB needs trimesh")
    traj = preview.sample_clip(read_bvh(WALK), duration=0.0)
    report, written = preview.write_preview(
        traj, tmp_path, feasibility.load_limits(BUNDLED_LIMITS), pictures=False
    )
    assert len(traj.times) == 1 and report["summary"]["feasible"]
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["samples"] == 1
    assert [p.name for p in written][-1] == "pose_0.0000s.glb"


def test_non_finite_motion_never_reaches_a_report():
    traj = preview.sample_clip(read_bvh(WALK))
    traj.world_pos[5, 3, 1] = np.nan
    with pytest.raises(ValueError, match="world_pos: non-finite value at t = "):
        check(traj)


def test_quaternions_round_trip_for_any_rotation():
    rng = np.random.default_rng(1)
    quat = rng.normal(size=(500, 4))
    quat[:4] = np.eye(4)  # identity and half turns about x, y, z (trace -1)
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    quat *= np.where(quat[:, :1] < 0, -1, 1)
    back = preview.quat_from_matrix(preview.quat_to_matrix(quat))
    np.testing.assert_allclose(back, quat, atol=1e-12)
    half = preview.quat_slerp(quat[4], quat[5], 0.5)
    np.testing.assert_allclose(preview.quat_slerp(quat[4], half, 1.0), half, atol=1e-12)
    # Halfway along the shorter arc: as near one end as the other (up to sign).
    assert np.sum(half * quat[4]) == pytest.approx(abs(np.sum(half * quat[5])))


# ---------------------------------------------------------------------- geometry


def test_segment_distance_known_cases_and_brute_force():
    z = np.zeros(3)
    ex, ey, ez = np.eye(3)
    assert segment_distance(z, z, ex, ex) == pytest.approx(1.0)  # two points
    assert segment_distance(ey, ey, -ex, ex) == pytest.approx(1.0)  # point, segment
    assert segment_distance(z, ex, ey, ey + ex) == pytest.approx(1.0)  # parallel
    assert segment_distance(z, 2 * ex, 3 * ex, 4 * ex) == pytest.approx(1.0)  # in line
    assert segment_distance(-ex, ex, ez - ey, ez + ey) == pytest.approx(1.0)  # crossing
    assert segment_distance(z, ex, -ex, 2 * ex) == pytest.approx(0.0)  # overlapping

    rng = np.random.default_rng(0)
    p0, p1, q0, q1 = rng.normal(size=(4, 200, 3))
    p1[:20] = p0[:20]  # some points
    q1[20:40] = q0[20:40] + 0.5 * (p1[20:40] - p0[20:40])  # some parallel pairs
    exact = segment_distance(p0, p1, q0, q1)
    u = np.linspace(0, 1, 201)
    on_p = p0[:, None] + u[None, :, None] * (p1 - p0)[:, None]  # (200, 201, 3)
    on_q = q0[:, None] + u[None, :, None] * (q1 - q0)[:, None]
    brute = np.linalg.norm(on_p[:, :, None] - on_q[:, None], axis=-1).min(axis=(1, 2))
    assert np.isfinite(exact).all()
    assert (exact <= brute + 1e-12).all()
    assert np.abs(brute - exact).max() < 0.02


@pytest.mark.parametrize(
    "direction",
    [
        (0, -1, 0),
        (0, 1, 0),
        (0, 0, 1),
        (0, 0, -1),
        (1, 0, 0),
        (-1e-9, -1, 1e-9),
        (1, 1, 1),
    ],
)
def test_capsule_on_any_bone_direction_is_valid_and_oriented(direction):
    pytest.importorskip("trimesh", reason="meshes need trimesh (the preview extra)")
    start = np.array([0.1, 1.0, -0.2])
    axis = np.asarray(direction, dtype=float)
    end = start + 0.4 * axis / np.linalg.norm(axis)
    frame = capsule_frame(start, end)
    rot = frame[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(rot[:, 2], (end - start) / 0.4, atol=1e-12)

    radius = 0.05
    mesh = capsule_mesh(start, end, radius)
    assert mesh.is_watertight and np.isfinite(mesh.vertices).all()
    vertex_distance = segment_distance(mesh.vertices, mesh.vertices, start, end)
    np.testing.assert_allclose(vertex_distance, radius, atol=1e-9)
    along = (mesh.vertices - start) @ ((end - start) / 0.4)
    assert along.min() == pytest.approx(-radius) and along.max() == pytest.approx(
        0.4 + radius
    )


def test_opposite_and_zero_length_bones():
    pytest.importorskip("trimesh", reason="meshes need trimesh (the preview extra)")
    joint = np.zeros(3)
    up, down = np.array([0, 0.3, 0]), np.array([0, -0.3, 0])
    a, b = capsule_frame(joint, up), capsule_frame(joint, down)
    np.testing.assert_allclose(a[:3, 2], -b[:3, 2], atol=1e-12)
    assert np.linalg.det(a[:3, :3]) == pytest.approx(1.0)
    assert np.linalg.det(b[:3, :3]) == pytest.approx(1.0)
    assert capsule_mesh(joint, joint, 0.05) is None
    with pytest.raises(ValueError, match="at least 1e-06 m apart"):
        capsule_frame(joint, joint)
    with pytest.raises(ValueError, match="radius: expected a positive number"):
        capsule_mesh(joint, up, 0.0)

    # The bundled rig ends in zero-length End Sites: they get no body.
    skeleton = read_bvh(WALK).skeleton
    bones = build_bones(skeleton, 0.01, base=1)
    assert not any("->end" in b.name for b in bones)
    assert not any(b.name.startswith("joint_Root") for b in bones)
    # A pose where two joints coincide drops that body only.
    segments = np.array([[joint, up], [joint, joint], [up, up + down]])
    three = [meshes.Bone(n, 0, -1, (0, 0, 0), 0.05) for n in "abc"]
    scene = meshes.pose_scene(three, segments)
    assert sorted(scene.geometry) == ["a", "c"]
    with pytest.raises(ValueError, match="non-finite"):
        meshes.pose_scene(three, segments * np.nan)


def test_glb_reloads_with_one_body_per_bone_around_the_joints(tmp_path):
    trimesh = pytest.importorskip("trimesh", reason="GLB needs trimesh")
    traj = preview.sample_clip(read_bvh(WALK))
    limits = feasibility.load_limits(BUNDLED_LIMITS)
    _, written = preview.write_preview(
        traj, tmp_path, limits, glb_times=[1.0, 2.51], pictures=False
    )
    glbs = sorted(p for p in written if p.suffix == ".glb")
    assert [p.name for p in glbs] == ["pose_1.0000s.glb", "pose_2.5000s.glb"]
    cfg = limits.bodies
    bones = build_bones(
        traj.skeleton,
        0.01,
        traj.base,
        cfg.radius_m,
        cfg.default_radius_m,
        cfg.end_length_m,
    )
    for path, k in zip(glbs, (30, 75)):
        scene = trimesh.load(path)
        assert isinstance(scene, trimesh.Scene)
        assert sorted(scene.geometry) == sorted(b.name for b in bones)
        seg = meshes.bone_segments(bones, traj.world_pos[k], traj.world_rot[k])
        radius = np.array([b.radius for b in bones])[:, None]
        lo = (seg.min(axis=1) - radius).min(axis=0)
        hi = (seg.max(axis=1) + radius).max(axis=0)
        np.testing.assert_allclose(scene.bounds, [lo, hi], atol=2e-3)
        joints = traj.world_pos[k, sorted({b.joint for b in bones})]
        assert (joints >= scene.bounds[0]).all() and (joints <= scene.bounds[1]).all()


# ---------------------------------------------------------------------- export


def test_clip_at_other_rates_is_interpolated_and_agrees_on_frames():
    clip = read_bvh(WALK)
    own = preview.sample_clip(clip)
    fast = preview.sample_clip(clip, rate=60, duration=3.0)
    assert "taken as they are" in own.sampling
    assert "interpolated" in fast.sampling and "slerp" in fast.sampling
    assert len(fast.times) == 181
    np.testing.assert_allclose(fast.world_pos[::2], own.world_pos[:91], atol=1e-9)
    np.testing.assert_allclose(fast.rows[::2], own.rows[:91], atol=1e-9)
    # Velocities come from the frames, so the corners of the slerp path at each
    # frame do not show up as spikes of acceleration.
    ratio = np.abs(fast.angular_acc).max() / np.abs(own.angular_acc[:91]).max()
    assert ratio < 3
    # Halfway samples lie between their frames.
    mid = fast.world_pos[1::2][:10]
    assert (
        np.linalg.norm(mid - own.world_pos[:10], axis=-1).max()
        <= np.linalg.norm(own.world_pos[1:11] - own.world_pos[:10], axis=-1).max()
        + 1e-9
    )
    with pytest.raises(ValueError, match="duration: 9 s runs past the clip's last"):
        preview.sample_clip(clip, rate=60, duration=9)
    with pytest.raises(ValueError, match="rate: expected a positive number"):
        preview.sample_clip(clip, rate=0)


@pytest.mark.parametrize(("rate", "duration"), [(50, 1.5), (500, 0.4)])
def test_model_export_is_the_model_at_exactly_those_times(
    model, tmp_path, rate, duration
):
    traj = preview.sample_stream(model.open(SOURCE, seed=3), rate, duration)
    times = np.arange(round(rate * duration) + 1) / rate
    np.testing.assert_array_equal(traj.times, times)
    rows = model.open(SOURCE, seed=3).channels_at(times)
    np.testing.assert_array_equal(traj.rows, rows)

    preview.write_csv(traj, tmp_path / "t.csv")
    preview.write_npz(traj, tmp_path / "t.npz")
    comments, names, table = read_csv(tmp_path / "t.csv")
    with np.load(tmp_path / "t.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["table"], table)
        columns = json.loads(str(npz["columns"]))
        header = json.loads(str(npz["header"]))
    assert [c["name"] for c in columns] == names
    assert any("exactly each time k / rate" in line for line in comments)
    assert any("central differences of the model over +-0.0001 s" in h for h in header)

    # Angle columns are the stream's channels, in radians.
    sk = model.skeleton
    angle_cols = [k for k, c in enumerate(columns) if c["quantity"] == "joint angle"]
    rot_cols = [
        sk.channel_starts()[sk.index(columns[k]["joint"])]
        + sk.channels[sk.index(columns[k]["joint"])].index(columns[k]["channel"])
        for k in angle_cols
    ]
    np.testing.assert_array_equal(table[:, angle_cols], np.radians(rows[:, rot_cols]))

    # Root position and quaternion are the root joint's world transform.
    local_rot, local_pos = channels_to_local(sk, rows)
    world_pos, world_rot = forward_kinematics(sk.parents, local_rot, local_pos)
    root = model.spec.root
    assert columns[1]["joint"] == sk.names[root]
    np.testing.assert_allclose(table[:, 1:4], world_pos[:, root] * 0.01, atol=1e-12)
    quat = table[:, 4:8]
    np.testing.assert_allclose(np.linalg.norm(quat, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        preview.quat_to_matrix(quat), world_rot[:, root], atol=1e-12
    )
    assert (np.sum(quat[1:] * quat[:-1], axis=1) >= 0).all()

    # Velocities are derivatives of the exported angles: trapezoids rebuild them.
    vel_cols = [
        k for k, c in enumerate(columns) if c["quantity"] == "joint angular velocity"
    ]
    angles, vel = table[:, angle_cols], table[:, vel_cols]
    step = 0.5 * (vel[1:] + vel[:-1]) / rate
    err = np.abs(np.diff(angles, axis=0) - step)
    assert np.median(err) < 1e-3 * np.abs(np.diff(angles, axis=0)).max()
    # And of the model's own motion: against wider differences at a hinge.
    knee = names.index("LowerLeg_L.Yrotation_rad_s") - vel_cols[0]
    picks = np.array([1, len(times) // 2, len(times) - 1])
    h = 1e-3
    around = model.open(SOURCE, seed=3).channels_at(
        np.concatenate([times[picks] - h, times[picks] + h])
    )
    col = rot_cols[knee]
    slope = np.radians(around[len(picks) :, col] - around[: len(picks), col]) / (2 * h)
    np.testing.assert_allclose(vel[picks, knee], slope, atol=0.02, rtol=0.01)


def test_pictures_are_pngs_of_the_asked_size(tmp_path):
    pytest.importorskip("matplotlib", reason="pictures need matplotlib (preview extra)")
    traj = preview.sample_clip(read_bvh(CLIPS / "dataset-1_run_normal_001.bvh"))
    report, _ = check(traj, feasibility.load_limits(BUNDLED_LIMITS))
    pictures.contact_sheet(
        traj, tmp_path / "sheet.png", size_px=(900, 500), report=report
    )
    pictures.plot_curves(traj, report, tmp_path / "a.png", "angle", size_px=(800, 600))
    pictures.plot_curves(
        traj, report, tmp_path / "v.png", "velocity", size_px=(700, 400)
    )
    for name, size in (
        ("sheet.png", (900, 500)),
        ("a.png", (800, 600)),
        ("v.png", (700, 400)),
    ):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        assert struct.unpack(">II", data[16:24]) == size
    with pytest.raises(ValueError, match="kind: expected one of"):
        pictures.plot_curves(traj, report, tmp_path / "x.png", "jerk")


# ---------------------------------------------------------------------------- cli


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="motionode")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_previews_a_clip(tmp_path, capsys):
    pytest.importorskip("trimesh", reason="preview needs trimesh (preview extra)")
    out = tmp_path / "run"
    code = run_cli(
        [
            "preview",
            str(CLIPS / "dataset-1_run_normal_001.bvh"),
            "--out",
            str(out),
            "--rate",
            "200",
            "--no-pictures",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "154 samples at 200 Hz" in text and "feasible:" in text
    assert "interpolated from the clip's 30 fps frames" in text
    assert {p.name for p in out.iterdir()} >= {
        "trajectory.csv",
        "trajectory.npz",
        "report.json",
    }
    report = json.loads((out / "report.json").read_text())
    assert report["limits"].endswith("bandai_human.json") and report["root"] == "Hips"
    strict = run_cli(
        [
            "preview",
            str(CLIPS / "dataset-1_run_normal_001.bvh"),
            "--out",
            str(out),
            "--no-pictures",
            "--strict",
            "--floor",
            "1",
        ]
    )
    assert strict == 1  # a floor 1 m up puts the legs under it
    with pytest.raises(ValueError, match="--floor: expected 'zero', 'feet' or a"):
        run_cli(["preview", str(WALK), "--out", str(out), "--floor", "low"])
    with pytest.raises(ValueError, match="source: 'nope.bvh' is neither"):
        run_cli(["preview", "nope.bvh", "--out", str(out)])


RUN = CLIPS / "dataset-1_run_normal_001.bvh"
SHORT = ["--rate", "50", "--duration", "0.4", "--no-pictures"]  # samples 0 .. 0.4 s


@pytest.mark.parametrize("bad", ["-0.5", "0.45", "40", "nan", "inf"])
def test_cli_glb_times_outside_the_motion_are_usage_errors(tmp_path, bad):
    # A time past the motion is a mistake (milliseconds, the wrong clip), not a
    # wish for the last pose; nothing is written.
    out = tmp_path / "out"
    argv = ["preview", str(RUN), "--out", str(out), *SHORT, "--glb-times", "0.2", bad]
    with pytest.raises(ValueError) as info:
        run_cli(argv)
    assert str(info.value) == (
        "--glb-times: expected times from 0 to 0.4 s (the first and last "
        f"samples), got {float(bad)!r}"
    )
    assert not out.exists()


def test_command_exits_2_for_a_glb_time_past_the_end(tmp_path, capsys):
    from motionode.cli import main

    argv = ["preview", str(RUN), "--out", str(tmp_path / "out"), *SHORT]
    assert main(argv + ["--glb-times", "2.5"]) == 2
    assert capsys.readouterr().err == (
        "error: --glb-times: expected times from 0 to 0.4 s (the first and last "
        "samples), got 2.5\n"
    )


def test_glb_times_snap_to_the_nearest_sample_within_the_motion(tmp_path):
    # Within half a sample period (0.01 s at 50 Hz) of a sample, a time takes it.
    argv = ["preview", str(RUN), "--out", str(tmp_path), *SHORT, "--glb-times"]
    assert run_cli(argv + ["0", "0.196", "0.405", "-0.004"]) == 0
    glbs = sorted(p.name for p in tmp_path.glob("*.glb"))
    assert glbs == ["pose_0.0000s.glb", "pose_0.2000s.glb", "pose_0.4000s.glb"]


def test_write_preview_refuses_glb_times_outside_the_motion(tmp_path):
    traj = preview.sample_clip(read_bvh(RUN), 50.0, 0.4)
    with pytest.raises(ValueError) as info:
        preview.write_preview(traj, tmp_path / "out", glb_times=[0.1, -1.0])
    assert str(info.value) == (
        "glb_times: expected times from 0 to 0.4 s (the first and last samples), "
        "got -1.0"
    )
    assert not (tmp_path / "out").exists()


def test_cli_previews_a_model_sample(tmp_path, capsys):
    pytest.importorskip("trimesh", reason="preview needs trimesh (preview extra)")
    code = run_cli(
        [
            "preview",
            SOURCE,
            "--seed",
            "1",
            "--rate",
            "50",
            "--duration",
            "0.4",
            "--out",
            str(tmp_path),
            "--no-pictures",
            "--glb-times",
            "0.2",
        ]
    )
    assert code == 0
    assert "21 samples at 50 Hz" in capsys.readouterr().out
    assert (tmp_path / "pose_0.2000s.glb").exists()
