"""Known-trouble BVH inputs (shared/cases/bvh) with their worked-out answers.

Each case runs on the given file and on a second input of the same kind written
here, with values derived by hand from 90-degree rotations where possible.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from motionode.bvh import Clip, parse_bvh, read_bvh, write_bvh

CASES = Path(__file__).parents[2] / "shared" / "cases" / "bvh"
TOL = 1e-4  # positions, in file units
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def given(name: str, *expected) -> pytest.param:
    """Parameters for the shared case ``name``; skipped, saying why, if absent."""
    path = CASES / f"{name}.bvh"
    reason = f"shared case not found: {path} (clone with shared/ beside the repo)"
    marks = () if path.exists() else pytest.mark.skip(reason=reason)
    return pytest.param(path, *expected, id=name, marks=marks)


def load(source) -> Clip:
    return read_bvh(source) if isinstance(source, Path) else parse_bvh(source, "inline")


def column(clip: Clip, joint: str, channel: str) -> np.ndarray:
    """(F,) values of one named channel."""
    sk = clip.skeleton
    j = sk.index(joint)
    return clip.motion[:, sk.channel_starts()[j] + sk.channels[j].index(channel)]


def joint_pos(clip: Clip, joint: str, frame: int) -> np.ndarray:
    return clip.world_positions()[frame, clip.skeleton.index(joint)]


def end_pos(clip: Clip, joint: str, frame: int) -> np.ndarray:
    """World position of the (only) End Site hanging from ``joint``."""
    sk = clip.skeleton
    (e,) = np.flatnonzero(sk.end_parents == sk.index(joint))
    return clip.world_positions(include_end_sites=True)[frame, sk.num_joints + e]


def skeleton_text(*, root: str, root_channels: str, body: str) -> str:
    return (
        f"HIERARCHY\nROOT {root}\n{{\n  OFFSET 0 0 0\n  CHANNELS {root_channels}\n"
        f"{body}}}\nMOTION\n"
    )


# ------------------------------------------------------------- rotation order per joint

ORDER_MIX = """HIERARCHY
ROOT Base
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Yrotation Xrotation Zrotation
  JOINT Arm
  {
    OFFSET 0 10 0
    CHANNELS 3 Xrotation Zrotation Yrotation
    End Site
    {
      OFFSET 0 10 0
    }
  }
}
MOTION
Frames: 1
Frame Time: 0.04
0 0 0 90 90 0 90 90 0
"""
# Base = Ry(90) Rx(90) sends +Y to +X, so Arm sits at (10, 0, 0); Arm = Rx(90) Rz(90)
# sends +Y to -X, which Base turns to +Z. Reading Base as Rx Ry would put Arm at
# (0, 0, 10); reading Arm as Rz Rx would put the end at (10, -10, 0).


@pytest.mark.parametrize(
    "source, expected",
    [
        given(
            "BVH-01",
            {
                ("Thigh", 1): (0, 50, -8),
                ("Shin", 1): (-2, 56.9282, -11.4641),
                ("Shin", "end", 1): (-7.5114, 54.8069, -12.5248),
            },
        ),
        pytest.param(
            ORDER_MIX,
            {("Arm", 0): (10, 0, 0), ("Arm", "end", 0): (10, 0, 10)},
            id="variant",
        ),
    ],
)
def test_rotation_order_is_read_per_joint(source, expected):
    clip = load(source)
    for key, want in expected.items():
        got = end_pos(clip, key[0], key[2]) if "end" in key else joint_pos(clip, *key)
        np.testing.assert_allclose(got, want, atol=TOL, err_msg=str(key))


# ---------------------------------------------------------- six- and three-channel mix

SIX_ROTATION_FIRST = (
    skeleton_text(
        root="Hips",
        root_channels="3 Zrotation Yrotation Xrotation",
        body="""  JOINT Spine
  {
    OFFSET 0 10 0
    CHANNELS 6 Zrotation Yrotation Xrotation Zposition Xposition Yposition
    End Site
    {
      OFFSET 0 5 0
    }
  }
""",
    )
    + "Frames: 2\nFrame Time: 0.04\n0 0 0 0 0 0 3 1 20\n0 0 0 90 0 0 3 1 20\n"
)


SPINE_AT_0_10_0 = {
    ("Spine", f"{a}position", f): v for a, v in zip("XYZ", (0, 10, 0)) for f in (0, 1)
}


@pytest.mark.parametrize(
    "source, width, values, ends",
    [
        given(
            "BVH-02",
            18,
            {
                ("Head", "Zrotation", 1): 30,
                ("Leg", "Xrotation", 1): -20,
                **SPINE_AT_0_10_0,
            },
            {("Head", 1): (-1.5, 114.3301, 2.0), ("Leg", 1): (5.0, 76.7237, 6.1042)},
        ),
        # Position channels are matched by name, not place: (X, Y, Z) = (1, 20, 3).
        pytest.param(
            SIX_ROTATION_FIRST,
            9,
            {
                ("Spine", "Xposition", 0): 1,
                ("Spine", "Yposition", 1): 20,
                ("Spine", "Zposition", 1): 3,
                ("Spine", "Zrotation", 1): 90,
            },
            {("Spine", 0): (1, 25, 3), ("Spine", 1): (-4, 20, 3)},
            id="variant",
        ),
    ],
)
def test_six_and_three_channel_joints_mixed(source, width, values, ends):
    clip = load(source)
    assert clip.motion.shape == (2, width)
    for (joint, channel, frame), want in values.items():
        assert column(clip, joint, channel)[frame] == want, (joint, channel, frame)
    for (joint, frame), want in ends.items():
        np.testing.assert_allclose(end_pos(clip, joint, frame), want, atol=TOL)


# -------------------------------------------------------------------- CHANNELS 0 joints

ZERO_CHANNEL_LEAF = (
    skeleton_text(
        root="Hips",
        root_channels="6 Xposition Yposition Zposition Zrotation Xrotation Yrotation",
        body="""  JOINT Spacer
  {
    OFFSET 0 5 0
    CHANNELS 0
    JOINT Chest
    {
      OFFSET 0 10 0
      CHANNELS 3 Zrotation Xrotation Yrotation
      JOINT Tip
      {
        OFFSET 0 4 0
        CHANNELS 0
        End Site
        {
          OFFSET 0 2 0
        }
      }
    }
  }
""",
    )
    + "Frames: 1\nFrame Time: 0.04\n0 80 0 0 0 0 90 0 0\n"
)


@pytest.mark.parametrize(
    "source, joints, expected",
    [
        given(
            "BVH-03",
            4,
            {
                ("Hips", 0): (0, 95, 0),
                ("Chest", 0): (0, 115, 0),
                ("Neck", 0): (0, 130, 0),
                ("Neck", "end", 0): (0, 138, 0),
                ("Neck", "end", 1): (0, 130, -8),
            },
        ),
        pytest.param(
            ZERO_CHANNEL_LEAF,
            4,
            {
                ("Spacer", 0): (0, 85, 0),
                ("Chest", 0): (0, 95, 0),
                ("Tip", 0): (-4, 95, 0),
                ("Tip", "end", 0): (-6, 95, 0),
            },
            id="variant",
        ),
    ],
)
def test_zero_channel_joints(source, joints, expected):
    clip = load(source)
    assert clip.skeleton.num_joints == joints
    assert len(clip.skeleton.end_parents) == 1
    assert clip.motion.shape[1] == 9
    for key, want in expected.items():
        got = end_pos(clip, key[0], key[2]) if "end" in key else joint_pos(clip, *key)
        np.testing.assert_allclose(got, want, atol=TOL, err_msg=str(key))


# ------------------------------------------------- position channels replace the OFFSET

REPLACING = (
    skeleton_text(
        root="Hips",
        root_channels="6 Xposition Yposition Zposition Zrotation Xrotation Yrotation",
        body="""  JOINT Spine
  {
    OFFSET 5 5 5
    CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 7 0
    }
  }
""",
    )
    + "Frames: 1\nFrame Time: 0.04\n0 100 0 0 0 0 0 20 0 0 0 0\n"
)


@pytest.mark.parametrize(
    "source, expected",
    [
        given(
            "BVH-04",
            {
                ("RightShoulder", 0): (-12, 130, 0),
                ("RightElbow", 0): (-37, 130, 0),
                ("RightElbow", "end", 0): (-59, 130, 0),
                ("RightElbow", 1): (-12, 105, 0),
                ("RightElbow", "end", 1): (-12, 83, 0),
            },
        ),
        # Adding the channels to the OFFSET would give (5, 125, 5).
        pytest.param(
            REPLACING,
            {("Spine", 0): (0, 120, 0), ("Spine", "end", 0): (0, 127, 0)},
            id="variant",
        ),
    ],
)
def test_position_channels_replace_offset(source, expected):
    clip = load(source)
    for key, want in expected.items():
        got = end_pos(clip, key[0], key[2]) if "end" in key else joint_pos(clip, *key)
        np.testing.assert_allclose(got, want, atol=TOL, err_msg=str(key))


# ------------------------------------------------------------------ unusual joint names

ODD_NAMES = ["rig|Hips", "Left  Arm (1)", "Hüfte", "Spine.001", "joint-01_L"]


def odd_names_text() -> str:
    body, close = "", ""
    for depth, name in enumerate(ODD_NAMES[1:], start=1):
        pad = "  " * depth
        body += (
            f"{pad}JOINT {name}\n{pad}{{\n{pad}  OFFSET 0 {depth} 0\n"
            f"{pad}  CHANNELS 3 Zrotation Xrotation Yrotation\n"
        )
        close = f"{pad}}}\n" + close
    pad = "  " * len(ODD_NAMES)
    body += f"{pad}End Site\n{pad}{{\n{pad}  OFFSET 0 1 0\n{pad}}}\n" + close
    row = " ".join(["0"] * (6 + 3 * (len(ODD_NAMES) - 1)))
    return (
        skeleton_text(
            root=ODD_NAMES[0],
            root_channels="6 Xposition Yposition "
            "Zposition Zrotation Xrotation Yrotation",
            body=body,
        )
        + f"Frames: 1\nFrame Time: 0.04\n{row}\n"
    )


@pytest.mark.parametrize(
    "source, names",
    [
        given("BVH-06", ["mixamorig:Hips", "Bip01 Spine", "Bip01 L.Clavicle"]),
        pytest.param(odd_names_text(), ODD_NAMES, id="variant"),
    ],
)
def test_joint_names_kept_exactly(source, names, tmp_path):
    clip = load(source)
    assert clip.skeleton.names == names
    write_bvh(tmp_path / "out.bvh", clip)
    text = (tmp_path / "out.bvh").read_text(encoding="utf-8")
    for name in names[1:]:
        assert f"JOINT {name}\n" in text
    assert read_bvh(tmp_path / "out.bvh").skeleton.names == names


def test_joint_names_case_positions():
    if not (CASES / "BVH-06.bvh").exists():
        pytest.skip(f"shared case not found: {CASES / 'BVH-06.bvh'}")
    clip = read_bvh(CASES / "BVH-06.bvh")
    np.testing.assert_allclose(
        joint_pos(clip, "Bip01 L.Clavicle", 0), (2.0576, 108.4862, 0), atol=TOL
    )
    np.testing.assert_allclose(
        end_pos(clip, "Bip01 L.Clavicle", 0), (7.9665, 109.5281, 0), atol=TOL
    )


def test_odd_names_positions():
    # Every joint sits 1, 2, 3, 4 units above the one before: heights 1, 3, 6, 10.
    clip = parse_bvh(odd_names_text(), "inline")
    heights = clip.world_positions(include_end_sites=True)[0, :, 1]
    np.testing.assert_allclose(heights, [0, 1, 3, 6, 10, 11], atol=TOL)


# ----------------------------------------------------------------------- number formats

NUMBER_SPELLINGS = skeleton_text(
    root="Hips",
    root_channels="6 Xposition Yposition Zposition Zrotation Xrotation Yrotation",
    body="""  JOINT Spine
  {
    OFFSET +.5 1.E1 -0.0e-0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 1 0
    }
  }
""",
) + (
    "Frames: 1\nFrame Time: 4.1666667e-2\n"
    "00012 0001.5e+0001 5e-324 -.25 3. 1.7976931348623157E308 -0 +0.0 1E-0\n"
)


@pytest.mark.parametrize(
    "source, spine_offset, frame_time, rows",
    [
        given(
            "BVH-07",
            [0.125, 9.5, -0.0],
            0.0083333333,
            [
                [15, 90, -4.0020632e-7, 0, 0, 0, 2.5e-40, -0.0, 1e-45],
                [-2, 90, 0.033333, 100, -100, 0.5, -7.5, 4.2e-7, -0.0],
            ],
        ),
        pytest.param(
            NUMBER_SPELLINGS,
            [0.5, 10.0, -0.0],
            0.041666667,
            [[12, 15, 5e-324, -0.25, 3, 1.7976931348623157e308, -0.0, 0.0, 1]],
            id="variant",
        ),
    ],
)
def test_number_formats(source, spine_offset, frame_time, rows, tmp_path):
    clip = load(source)
    want = np.array(rows, dtype=np.float64)
    offset = clip.skeleton.offsets[1]
    np.testing.assert_array_equal(offset, spine_offset)
    np.testing.assert_array_equal(np.signbit(offset), np.signbit(spine_offset))
    assert clip.frame_time == frame_time
    np.testing.assert_array_equal(clip.motion, want)
    np.testing.assert_array_equal(np.signbit(clip.motion), np.signbit(want))

    # Written back, every value (signed zeros and subnormals too) reads the same.
    write_bvh(tmp_path / "out.bvh", clip)
    again = read_bvh(tmp_path / "out.bvh")
    np.testing.assert_array_equal(again.motion, want)
    np.testing.assert_array_equal(np.signbit(again.motion), np.signbit(want))


def test_number_formats_case_position():
    if not (CASES / "BVH-07.bvh").exists():
        pytest.skip(f"shared case not found: {CASES / 'BVH-07.bvh'}")
    clip = read_bvh(CASES / "BVH-07.bvh")
    np.testing.assert_allclose(
        joint_pos(clip, "Spine", 1), (-0.3961, 90.4097, -9.3222), atol=TOL
    )


# ---------------------------------------------------------- no newline at end of file

TWO_JOINTS = skeleton_text(
    root="Hips",
    root_channels="6 Xposition Yposition Zposition Zrotation Xrotation Yrotation",
    body="""  JOINT Chest
  {
    OFFSET 0 25 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 20 0
    }
  }
""",
)


@pytest.mark.parametrize(
    "source, frames, last_x, last_z_rot",
    [
        given("BVH-08", 3, 2.0, 20.0),
        # CRLF, trailing blanks on the last row and no final newline.
        pytest.param(
            TWO_JOINTS.replace("\n", "\r\n") + "Frames: 2\r\nFrame Time: 0.04\r\n"
            "0 90 0 0 0 0 0 0 0\r\n7 90 0 0 0 0 90 0 0 \t",
            2,
            7.0,
            90.0,
            id="variant-crlf",
        ),
    ],
)
def test_no_newline_at_end(source, frames, last_x, last_z_rot):
    if isinstance(source, Path):
        assert not source.read_bytes().endswith(b"\n")
    clip = load(source)
    assert clip.num_frames == frames
    assert column(clip, "Hips", "Xposition")[-1] == last_x
    assert column(clip, "Chest", "Zrotation")[-1] == last_z_rot
    if isinstance(source, Path):
        np.testing.assert_allclose(
            end_pos(clip, "Chest", 2), (-4.8404, 133.7939, 0), atol=TOL
        )
    else:
        np.testing.assert_allclose(end_pos(clip, "Chest", 1), (-13, 115, 0), atol=TOL)


def test_no_newline_after_frame_time_of_empty_clip():
    clip = parse_bvh(TWO_JOINTS + "Frames: 0\nFrame Time: 0.04", "inline")
    assert clip.motion.shape == (0, 9)
    assert clip.frame_time == 0.04


# --------------------------------------------------------------- whitespace and endings

CLEAN_10 = TWO_JOINTS + (
    "Frames: 2\nFrame Time: 0.0333333\n0 90 0 0 0 0 30 0 0\n1 90 0 0 0 0 -30 0 0\n"
)
MESSY_10 = (
    "\r\n\n  hierarchy\rROOT \t Hips \r\n{\n\tOFFSET 0 0 0\r"
    "\tchannels\t6 Xposition yposition ZPOSITION Zrotation Xrotation Yrotation\r\n"
    "JOINT\t\tChest\n{\n   OFFSET 0.0  25.0\t0\r\n CHANNELS 3 Zrotation Xrotation "
    "Yrotation\n\n  end \t site\n {\n OFFSET 0 20 0 \n }\n }\n}\r\n"
    "motion\nFrames:\t\t2\r\nFrame  \t Time:   0.0333333\r\n\r\n"
    " 0\t90 0 0 0 0 30 0 0\r\r\n\n\t1 90  0 0 0 0 -30 0 0\r\n\n"
)


@pytest.mark.parametrize(
    "source", [given("BVH-10"), pytest.param(MESSY_10, id="variant")]
)
def test_whitespace_and_line_endings(source):
    clip = load(source)
    clean = parse_bvh(CLEAN_10, "clean")
    assert clip.skeleton.names == ["Hips", "Chest"]
    assert clip.skeleton.channels == clean.skeleton.channels
    np.testing.assert_array_equal(clip.skeleton.offsets, clean.skeleton.offsets)
    np.testing.assert_array_equal(clip.motion, clean.motion)
    assert clip.frame_time == clean.frame_time
    np.testing.assert_array_equal(column(clip, "Chest", "Zrotation"), [30, -30])
    np.testing.assert_allclose(end_pos(clip, "Chest", 0), (-10, 132.3205, 0), atol=TOL)
    np.testing.assert_allclose(end_pos(clip, "Chest", 1), (11, 132.3205, 0), atol=TOL)


# ------------------------------------------------------------------ rounded frame times


def hips_only(frame_time: str, frames: int) -> str:
    rows = "".join(f"{k} 90 0 0 0 0\n" for k in range(frames))
    return (
        "HIERARCHY\nROOT Hips\n{\n  OFFSET 0 0 0\n  CHANNELS 6 Xposition Yposition "
        "Zposition Zrotation Xrotation Yrotation\n  End Site\n  {\n    OFFSET 0 10 0\n"
        f"  }}\n}}\nMOTION\nFrames: {frames}\nFrame Time: {frame_time}\n{rows}"
    )


@pytest.mark.parametrize(
    "source, fps, frames",
    [
        given("BVH-11", 60, 15),
        pytest.param(hips_only("0.008333", 241), 120, 241, id="variant-120"),
    ],
)
def test_rounded_frame_time(source, fps, frames):
    from motionode.train import stride_clip

    clip = load(source)
    assert clip.fps == fps
    assert math.floor(clip.fps) == fps
    times = clip.times
    assert len(times) == frames
    assert np.all(np.diff(times) > 0)
    # Index over the whole-number rate, so rounding in the file never accumulates.
    np.testing.assert_allclose(times, np.arange(frames) / fps, rtol=0, atol=1e-12)

    # Down to 30 fps keeps every (fps / 30)-th real frame, the first one included.
    step = fps // 30
    half = stride_clip(clip, 30.0)
    assert half.fps == 30
    np.testing.assert_array_equal(half.motion[:, 0], np.arange(0, frames, step))


def test_rounded_frame_time_case_last_stamp():
    if not (CASES / "BVH-11.bvh").exists():
        pytest.skip(f"shared case not found: {CASES / 'BVH-11.bvh'}")
    # The stated 14 x 0.0166667 = 0.2333338 s; 14 / 60 lies 5e-7 s from it.
    times = read_bvh(CASES / "BVH-11.bvh").times
    assert times[-1] == pytest.approx(0.2333338, abs=1e-6)


# ---------------------------------------------------------------- writing: precision


def awkward_clip() -> Clip:
    values = [
        123456789.123456789,
        0.1 + 0.2,
        -1.5e-7,
        1e21,
        5e-324,
        -0.0,
        1e-300,
        179.99999999999997,
        -180.0,
    ]
    clip = parse_bvh(
        TWO_JOINTS + "Frames: 1\nFrame Time: 0.04\n" + " ".join(["0"] * 9) + "\n",
        "inline",
    )
    clip.motion = np.array([values])
    return clip


def check_written_rows(path: Path, width: int) -> None:
    """Every motion row holds ``width`` plain numbers: no nan/inf, no '0.0-7.5'."""
    lines = path.read_text(encoding="utf-8").split("\n")
    start = next(i for i, s in enumerate(lines) if s.startswith("Frame Time:")) + 1
    rows = [s for s in lines[start:] if s]
    assert rows
    for row in rows:
        tokens = row.split(" ")
        assert len(tokens) == width, row
        for tok in tokens:
            assert NUMBER.fullmatch(tok), tok


@pytest.mark.parametrize("source", [given("BVH-12"), pytest.param(None, id="variant")])
def test_writer_separators_and_precision(source, tmp_path):
    clip = load(source) if source is not None else awkward_clip()
    out = tmp_path / "out.bvh"
    write_bvh(out, clip)
    check_written_rows(out, 9)
    again = read_bvh(out)
    np.testing.assert_allclose(again.motion, clip.motion, rtol=0, atol=TOL)
    # Shortest round-tripping floats: every value comes back bit for bit.
    np.testing.assert_array_equal(again.motion, clip.motion)
    np.testing.assert_array_equal(np.signbit(again.motion), np.signbit(clip.motion))
    if source is not None:
        assert again.motion[1, 0] == 123456.789
        np.testing.assert_allclose(
            end_pos(again, "Chest", 0), (5.8545, 44.4124, -4.2733), atol=TOL
        )


# ------------------------------------------------------- writing: angles beyond 360


def yaw_clip(yaws: list[float]) -> str:
    rows = "".join(f"0 90 0 0 0 {y} 0 0 0\n" for y in yaws)
    return (
        skeleton_text(
            root="Hips",
            root_channels="6 Xposition Yposition Zposition Zrotation Xrotation "
            "Yrotation",
            body="""  JOINT Head
  {
    OFFSET 0 60 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 0 8
    }
  }
""",
        )
        + f"Frames: {len(yaws)}\nFrame Time: 0.0333333\n{rows}"
    )


@pytest.mark.parametrize(
    "source, order, step",
    [
        given("BVH-15", "ZXY", 100.0),
        pytest.param(
            yaw_clip([0, -150, -300, -450, -600, -750]), "YXZ", -150.0, id="variant"
        ),
    ],
)
def test_writer_keeps_angles_continuous(source, order, step, tmp_path):
    clip = load(source)
    yaw = column(clip, "Hips", "Yrotation")
    np.testing.assert_array_equal(np.diff(yaw), step)  # read as written, never wrapped

    # Re-expressed through rotation matrices, the writer must undo the wrap itself.
    write_bvh(tmp_path / "out.bvh", clip, rotation_order=order)
    again = read_bvh(tmp_path / "out.bvh")
    assert again.skeleton.rotation_order(0) == order
    np.testing.assert_allclose(
        np.diff(column(again, "Hips", "Yrotation")), step, atol=1e-9
    )
    np.testing.assert_allclose(
        again.world_positions(True), clip.world_positions(True), atol=TOL
    )
    # Yaw k * step turns the nose (0, 0, 8) to 8 * (sin, 0, cos).
    for k in (1, 2):
        a = math.radians(k * step)
        np.testing.assert_allclose(
            end_pos(again, "Head", k), (8 * math.sin(a), 150, 8 * math.cos(a)), atol=TOL
        )


def test_writer_case_yaw_positions():
    if not (CASES / "BVH-15.bvh").exists():
        pytest.skip(f"shared case not found: {CASES / 'BVH-15.bvh'}")
    clip = read_bvh(CASES / "BVH-15.bvh")
    np.testing.assert_allclose(
        end_pos(clip, "Head", 1), (7.8785, 150, -1.3892), atol=TOL
    )
    np.testing.assert_allclose(
        end_pos(clip, "Head", 2), (-2.7362, 150, -7.5175), atol=TOL
    )


# ----------------------------------------------------------------- axes and units

# Y-up centimetres to Z-up metres: +90 degrees about X, then scale; (x, y, z) goes to
# 0.01 * (x, -z, y).
Y_UP_CM_TO_Z_UP_M = 0.01 * np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)


@pytest.mark.parametrize(
    "source, frame, yaw, expected",
    [
        given(
            "BVH-17",
            0,
            0.0,
            {
                "Hips": (0.05, -0.10, 0.90),
                "LeftUpLeg": (0.15, -0.10, 0.85),
                "Head": (0.05, -0.10, 1.50),
                "nose": (0.05, -0.18, 1.50),
            },
        ),
        given("BVH-17", 1, 90.0, {"nose": (0.13, -0.10, 1.50)}),
        # Yaw 180 turns the nose from +z to -z in Y-up, that is from -y to +y in Z-up.
        pytest.param(
            None,
            1,
            180.0,
            {"Head": (0.05, -0.10, 1.50), "nose": (0.05, -0.02, 1.50)},
            id="variant-yaw-180",
        ),
    ],
)
def test_axes_and_units(source, frame, yaw, expected):
    if source is None:
        if not (CASES / "BVH-17.bvh").exists():
            pytest.skip(f"shared case not found: {CASES / 'BVH-17.bvh'}")
        text = (CASES / "BVH-17.bvh").read_text(encoding="utf-8")
        text = text.replace("5.0 90.0 10.0 0.0 0.0 90.0", "5.0 90.0 10.0 0.0 0.0 180.0")
        source = text
    assert np.linalg.det(Y_UP_CM_TO_Z_UP_M / 0.01) == pytest.approx(1.0)
    clip = load(source)
    for name, want in expected.items():
        if name == "nose":
            cm = end_pos(clip, "Head", frame)
        else:
            cm = joint_pos(clip, name, frame)
        np.testing.assert_allclose(Y_UP_CM_TO_Z_UP_M @ cm, want, atol=TOL, err_msg=name)
    # Only lengths scale: the yaw channel stays as written.
    assert column(clip, "Hips", "Yrotation")[frame] == yaw
