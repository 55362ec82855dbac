"""BVH reading and writing: real clips round-trip, bad input fails clearly."""

import json
import os
import random
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from motionode.bvh import (
    BVHError,
    Clip,
    Skeleton,
    format_bvh,
    parse_bvh,
    read_bvh,
    write_bvh,
)
from motionode.rotations import EULER_ORDERS

DATA = Path(__file__).parent / "data"
CLIPS_DIR = Path(__file__).parents[2] / "shared" / "data" / "bvh"
MISSING = f"shared clips not found at {CLIPS_DIR} (clone with shared/ beside the repo)"
CLIPS = sorted(CLIPS_DIR.rglob("*.bvh")) if CLIPS_DIR.is_dir() else []
RIG_FPS = {
    "bandai": 30,
    "cmu": 120,
    "cmu_3dsmax": 120,
    "cmu_cs19": 30,
    "cmu_daz": 120,
    "cmu_iclone": 60,
}
# A few clips per rig for the six-order check: short ones, ones whose angles wrap
# past 180 degrees between frames, and both iClone header variants.
ORDER_CLIPS = [
    "bandai/dataset-1_dash_normal_001.bvh",
    "bandai/dataset-1_walk-back_normal_001.bvh",
    "cmu/02_01.bvh",
    "cmu/05_06.bvh",
    "cmu_3dsmax/131_01.bvh",
    "cmu_cs19/10_01.bvh",
    "cmu_daz/salsa/10.bvh",
    "cmu_iclone/002_03.bvh",
    "cmu_iclone/006_08.bvh",
]
MOTION_TEXT = re.compile(r"[^0-9eE+\-. \n]")  # anything that is not part of a number


def clip_params(paths: list[Path]) -> list:
    if not paths:
        return [
            pytest.param(None, id="no-shared-data", marks=pytest.mark.skip(MISSING))
        ]
    return [pytest.param(p, id=p.relative_to(CLIPS_DIR).as_posix()) for p in paths]


def sources_table() -> dict[str, dict[str, str]]:
    """Rows of the file tables in SOURCES.md, keyed by path, cells keyed by header."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] = []
    for line in (CLIPS_DIR / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "File":
            header = cells
        elif header and line.startswith("| `"):
            rows[cells[0].strip("`")] = dict(zip(header, cells))
    return rows


def max_step(motion: np.ndarray, skeleton: Skeleton) -> float:
    """Largest change of any rotation channel between consecutive frames, degrees."""
    cols = [
        skeleton.channel_starts()[j] + k
        for j, chans in enumerate(skeleton.channels)
        for k, c in enumerate(chans)
        if c.endswith("rotation")
    ]
    return float(np.abs(np.diff(motion[:, cols], axis=0)).max(initial=0.0))


def assert_same_positions(a: Clip, b: Clip, tol: float) -> None:
    err = np.abs(a.world_positions(True) - b.world_positions(True)).max()
    assert err <= tol, f"joint positions differ by {err} (allowed {tol})"


def motion_part(text: str) -> str:
    return text[text.index("\nFrame Time:") :].split("\n", 2)[2]


# ------------------------------------------------------------------ real clips


@pytest.fixture(scope="module")
def table():
    if not CLIPS:
        pytest.skip(MISSING)
    return sources_table()


@pytest.mark.parametrize("path", clip_params(CLIPS))
def test_clip_matches_measured_facts(path, table):
    key = path.relative_to(CLIPS_DIR).as_posix()
    facts = table[key]
    clip = read_bvh(path)
    sk = clip.skeleton
    assert path.stat().st_size == int(facts["Size"].replace(",", ""))
    assert sk.num_joints == int(facts["Joints"])
    assert sk.num_channels == int(facts["Channels"])
    assert clip.motion.shape == (int(facts["Frames"]), sk.num_channels)
    assert clip.frame_time == float(facts["Frame Time (fps)"].split()[0])
    assert clip.fps == RIG_FPS[key.split("/")[0]]
    if "ES" in facts:
        assert len(sk.end_parents) == int(facts["ES"])
    orders = Counter(
        sk.rotation_order(j)
        for j in range(sk.num_joints)
        if any(c.endswith("rotation") for c in sk.channels[j])
    )
    want = {}
    for item in facts["Rot"].split(", "):
        order, count = item.split("x")
        want[order] = int(count)
    assert orders == want


@pytest.mark.parametrize("path", clip_params(CLIPS))
def test_clip_round_trip(path, tmp_path):
    clip = read_bvh(path)
    out = tmp_path / "out.bvh"
    write_bvh(out, clip)
    assert os.listdir(tmp_path) == ["out.bvh"]  # no temporary file left behind

    text = out.read_text(encoding="utf-8")
    assert "\r" not in text
    assert f"\nFrames: {clip.num_frames}\n" in text
    assert not MOTION_TEXT.search(motion_part(text))  # no nan, inf or stray text

    again = read_bvh(out)
    assert again.skeleton.names == clip.skeleton.names
    assert again.skeleton.channels == clip.skeleton.channels
    np.testing.assert_array_equal(again.skeleton.offsets, clip.skeleton.offsets)
    np.testing.assert_array_equal(again.skeleton.end_offsets, clip.skeleton.end_offsets)
    assert again.frame_time == clip.frame_time
    assert np.abs(again.motion - clip.motion).max(initial=0.0) <= 1e-4
    np.testing.assert_array_equal(again.motion, clip.motion)  # repr round-trips
    assert_same_positions(again, clip, 1e-4 * clip.skeleton.height())


def check_all_orders(path: Path, tmp_path: Path) -> None:
    clip = read_bvh(path)
    tol = 1e-4 * clip.skeleton.height()
    rotating = [
        j
        for j, chans in enumerate(clip.skeleton.channels)
        if any(c.endswith("rotation") for c in chans)
    ]
    for order in EULER_ORDERS:
        out = tmp_path / f"{order}.bvh"
        write_bvh(out, clip, rotation_order=order)
        again = read_bvh(out)
        assert {again.skeleton.rotation_order(j) for j in rotating} == {order}
        assert_same_positions(again, clip, tol)
        # The writer unwraps angles: no channel jumps by more than half a turn.
        assert max_step(again.motion, again.skeleton) <= 180.0 + 1e-9, order


@pytest.mark.parametrize(
    "path", clip_params([CLIPS_DIR / p for p in ORDER_CLIPS] if CLIPS else [])
)
def test_six_rotation_orders_keep_positions(path, tmp_path):
    check_all_orders(path, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", clip_params(CLIPS))
def test_six_rotation_orders_every_clip(path, tmp_path):
    check_all_orders(path, tmp_path)


# -------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, line, message",
    [
        ("truncated_hierarchy.bvh", 8, "expected 'MOTION', got end of file"),
        ("truncated_motion.bvh", 20, "expected 9 values per motion row, got 5"),
        ("empty.bvh", 1, "expected 'HIERARCHY', got end of file"),
        ("json.bvh", 1, "expected 'HIERARCHY', got '{\"frames\""),
        ("row_too_short.bvh", 20, "expected 9 values per motion row, got 8"),
        ("row_too_long.bvh", 21, "expected 9 values per motion row, got 10"),
        # The total count is right, so only a per-row check stops the values shifting.
        ("rows_short_then_long.bvh", 20, "expected 9 values per motion row, got 8"),
        ("non_numeric.bvh", 21, "expected a number, got '1,5'"),
        ("nan.bvh", 20, "got nan in frame 1 channel 4 (Hips Xrotation)"),
        ("inf.bvh", 21, "got -inf in frame 2 channel 7 (Chest Xrotation)"),
        ("overflow.bvh", 19, "got inf in frame 0 channel 1 (Hips Yposition)"),
        ("missing_frame_time.bvh", 18, "expected 'Frame Time:', got '0 90 0"),
        (
            "bad_frame_time.bvh",
            18,
            "expected a frame time of at least 1e-06 s, got '0'",
        ),
        ("channel_count_not_ascii.bvh", 9, "expected a channel count after CHANNELS"),
        ("offset_not_finite.bvh", 8, "expected finite numbers in OFFSET"),
        (
            "block_not_closed.bvh",
            15,
            "closing the block opened at line 3, got 'MOTION'",
        ),
        (
            "brace_glued_to_name.bvh",
            7,
            (
                "expected '{' opening the block of JOINT 'Chest{' (line 6), "
                "got 'OFFSET 0 25 0'"
            ),
        ),
        ("brace_before_offset.bvh", 7, "expected '{' alone on its line, got '{ OFF"),
        ("two_braces_on_a_line.bvh", 14, "expected '}' alone on its line, got '} }'"),
        # Tools that address joints by name (Blender, engines) cannot tell them apart.
        (
            "duplicate_joint_name.bvh",
            15,
            "expected unique joint names, got 'Leg' again (first at line 6)",
        ),
    ],
)
def test_bad_file_names_file_and_line(name, line, message):
    path = DATA / name
    with pytest.raises(BVHError) as info:
        read_bvh(path)
    err = info.value
    assert (err.path, err.line) == (str(path), line)
    assert str(err).startswith(f"{path}:{line}: ")
    assert message in str(err)


def test_opening_braces_may_end_the_joint_line():
    # Some exporters write "ROOT Hips {"; the brace is then not part of the name.
    clip = read_bvh(DATA / "braces_on_joint_lines.bvh")
    plain = read_bvh(DATA / "two_joints.bvh")
    assert clip.skeleton.names == plain.skeleton.names == ["Hips", "Chest"]
    assert clip.skeleton.channels == plain.skeleton.channels
    np.testing.assert_array_equal(clip.skeleton.parents, [-1, 0])
    np.testing.assert_array_equal(clip.skeleton.offsets, [[0, 0, 0], [0, 25, 0]])
    np.testing.assert_array_equal(clip.skeleton.end_parents, [1])
    np.testing.assert_array_equal(clip.skeleton.end_offsets, [[0, 20, 0]])
    np.testing.assert_array_equal(clip.motion, plain.motion)


@pytest.mark.parametrize(
    "change, line, message",
    [
        (("ROOT Hips\n", "ROOT {\n"), 2, "expected a joint name after ROOT, got '{'"),
        (
            ("End Site\n", "End Site x\n"),
            10,
            "expected 'End Site' or 'End Site {', got 'End Site x'",
        ),
        (
            ("ROOT Hips\n{\n", "ROOT Hips\n"),
            3,
            (
                "expected '{' opening the block of ROOT 'Hips' (line 2), "
                "got 'OFFSET 0 0 0'"
            ),
        ),
    ],
)
def test_block_openings_that_do_not_read(change, line, message):
    original = (DATA / "two_joints.bvh").read_text(encoding="utf-8")
    text = original.replace(*change, 1)
    assert text != original
    with pytest.raises(BVHError) as info:
        parse_bvh(text, "open.bvh")
    assert str(info.value) == f"open.bvh:{line}: {message}"


def test_a_joint_named_like_the_root_is_a_duplicate():
    text = (DATA / "two_joints.bvh").read_text(encoding="utf-8")
    with pytest.raises(BVHError) as info:
        parse_bvh(text.replace("JOINT Chest", "JOINT Hips"), "twice.bvh")
    assert str(info.value) == (
        "twice.bvh:6: expected unique joint names, got 'Hips' again (first at line 2)"
    )


def test_png_bytes_are_not_bvh(tmp_path):
    path = tmp_path / "image.bvh"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01"
    )
    with pytest.raises(BVHError) as info:
        read_bvh(path)
    assert (info.value.path, info.value.line) == (str(path), 1)
    assert str(info.value).startswith(f"{path}:1: expected UTF-8 text")


def test_text_with_nul_byte_is_not_bvh():
    text = (DATA / "two_joints.bvh").read_text(encoding="utf-8")
    with pytest.raises(BVHError, match=r"^nul\.bvh:4: expected text, got binary"):
        parse_bvh(text.replace("OFFSET 0 0 0", "OFFSET 0 \x00 0"), "nul.bvh")


@pytest.mark.parametrize(
    "name, declared", [("frames_too_many.bvh", 5), ("frames_too_few.bvh", 2)]
)
def test_frame_count_mismatch_keeps_rows_and_warns(name, declared):
    path = DATA / name
    with pytest.warns(UserWarning) as record:
        clip = read_bvh(path)
    assert len(record) == 1
    assert str(record[0].message) == (
        f"{path}:17: Frames: says {declared}, found 3 complete rows; keeping 3"
    )
    np.testing.assert_array_equal(clip.motion[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(clip.motion[:, 6], [0, 10, 20])


def test_byte_order_mark_is_skipped():
    clip = read_bvh(DATA / "byte_order_mark.bvh")
    plain = read_bvh(DATA / "two_joints.bvh")
    assert clip.skeleton.names == plain.skeleton.names == ["Hips", "Chest"]
    np.testing.assert_array_equal(clip.motion, plain.motion)


def test_mangled_input_raises_only_bvh_error():
    # Mutated copies of a good file either parse or raise BVHError with a line.
    text = (DATA / "two_joints.bvh").read_text(encoding="utf-8")
    pieces = [
        "{",
        "}",
        "JOINT",
        "ROOT",
        "End",
        "Site",
        "OFFSET",
        "CHANNELS",
        "7",
        "-1",
        "MOTION",
        "Frames:",
        "Frame Time:",
        "nan",
        "1e999",
        "\u00b3",
        "\u0663",
        "Xposition",
        "",
        "\n",
        "\x00",
    ]
    rng = random.Random(7)
    outcomes = Counter()
    for _ in range(1500):
        tokens = text.replace("\n", " \n ").split(" ")
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(tokens))
            op = rng.random()
            if op < 0.4:
                tokens[i] = rng.choice(pieces)
            elif op < 0.7:
                del tokens[i]
            else:
                tokens.insert(i, rng.choice(pieces))
        mangled = " ".join(tokens).replace(" \n ", "\n")
        try:
            with warnings.catch_warnings():
                # The frame-count warning has its own test.
                warnings.simplefilter("ignore", UserWarning)
                parse_bvh(mangled, "m.bvh")
            outcomes["parsed"] += 1
        except BVHError as err:
            assert err.path == "m.bvh" and isinstance(err.line, int) and err.line >= 1
            outcomes["error"] += 1
    assert outcomes["parsed"] > 50 and outcomes["error"] > 500, outcomes


# ------------------------------------------------------------------ frame times


@pytest.mark.parametrize("fps", [24, 144])
def test_frame_time_survives_writing(fps, tmp_path):
    clip = read_bvh(DATA / "two_joints.bvh")
    clip.frame_time = 1.0 / fps
    out = tmp_path / f"at{fps}.bvh"
    write_bvh(out, clip)
    text = out.read_text(encoding="utf-8")
    rows = [s for s in motion_part(text).split("\n") if s]
    frames = re.search(r"^Frames: (\d+)$", text, re.MULTILINE)
    assert frames and int(frames.group(1)) == len(rows) == 3
    again = read_bvh(out)
    assert again.frame_time == pytest.approx(1.0 / fps, rel=1e-9)
    assert again.fps == fps
    np.testing.assert_allclose(again.times, np.arange(3) / fps, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "frame_time, fps",
    [
        (0.0083333, 120.0),
        (0.008333, 120.0),
        (0.016667, 60.0),
        (0.0333333, 30.0),
        (1 / 7, 7.0),
        (0.0123, 1 / 0.0123),
    ],
)
def test_fps_snaps_only_rounded_frame_times(frame_time, fps):
    clip = read_bvh(DATA / "two_joints.bvh")
    clip.frame_time = frame_time
    assert clip.fps == fps


# ---------------------------------------------------------------------- writing


def test_writer_refuses_non_finite_values(tmp_path):
    clip = read_bvh(DATA / "two_joints.bvh")
    for bad in (np.nan, np.inf, -np.inf):
        clip.motion[1, 4] = bad
        with pytest.raises(ValueError, match=r"frame 1 channel 4"):
            write_bvh(tmp_path / "out.bvh", clip)
    clip.motion[1, 4] = 0.0
    clip.skeleton.end_offsets[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"skeleton\.end_offsets: non-finite value"):
        format_bvh(clip)
    clip.skeleton.end_offsets[0, 1] = 20.0
    clip.skeleton.offsets[1, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"skeleton\.offsets: non-finite value in row 1"
    ):
        write_bvh(tmp_path / "out.bvh", clip)
    clip.frame_time = float("nan")
    clip.skeleton.offsets[1, 0] = 0.0
    with pytest.raises(ValueError, match=r"frame_time"):
        write_bvh(tmp_path / "out.bvh", clip)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "is empty"),
        ("Left\nArm", "contains a line break"),
        ("Left\r\nArm", "contains a line break"),
        ("Left\u2028Arm", "contains a line break"),
        ("Arm\n", "contains a line break"),
        (" Arm", "starts or ends with whitespace"),
        ("Arm\t", "starts or ends with whitespace"),
        ("Arm\x00", "contains a NUL character"),
        ("Arm {", "ends in a separate '{', which would open its block"),
        ("Hips", "is also the name of joint 0"),
    ],
)
def test_writer_refuses_names_that_would_not_read_back(name, problem, tmp_path):
    clip = read_bvh(DATA / "two_joints.bvh")
    clip.skeleton.names[1] = name
    with pytest.raises(ValueError) as info:
        write_bvh(tmp_path / "out.bvh", clip)
    assert str(info.value) == (
        f"skeleton.names[1]: joint name {name!r} {problem}; "
        "it would not read back from BVH"
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["Left Arm", "Left \t Arm", "Arm{", "{ Arm", "a}"])
def test_names_with_inner_spaces_and_braces_read_back(name, tmp_path):
    clip = read_bvh(DATA / "two_joints.bvh")
    clip.skeleton.names[1] = name
    write_bvh(tmp_path / "out.bvh", clip)
    assert read_bvh(tmp_path / "out.bvh").skeleton.names == ["Hips", name]


def test_writer_is_atomic(tmp_path, monkeypatch):
    clip = read_bvh(DATA / "two_joints.bvh")
    out = tmp_path / "clip.bvh"
    out.write_text("previous contents\n", encoding="utf-8")

    def fail(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk went away"):
        write_bvh(out, clip)
    assert os.listdir(tmp_path) == ["clip.bvh"]
    assert out.read_text(encoding="utf-8") == "previous contents\n"

    monkeypatch.undo()
    write_bvh(out, clip)
    assert os.listdir(tmp_path) == ["clip.bvh"]
    np.testing.assert_array_equal(read_bvh(out).motion, clip.motion)


def test_writer_rejects_unknown_rotation_order(tmp_path):
    clip = read_bvh(DATA / "two_joints.bvh")
    with pytest.raises(
        ValueError, match="expected one of XYZ, XZY, YXZ, YZX, ZXY, ZYX"
    ):
        write_bvh(tmp_path / "out.bvh", clip, rotation_order="XYX")
    assert os.listdir(tmp_path) == []


def test_writer_output_is_plain_lf_text(tmp_path):
    clip = read_bvh(DATA / "two_joints.bvh")
    write_bvh(tmp_path / "out.bvh", clip)
    raw = (tmp_path / "out.bvh").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    assert raw.decode("utf-8") == format_bvh(clip)
    assert raw.startswith(b"HIERARCHY\nROOT Hips\n{\n  OFFSET 0.0 0.0 0.0\n")


# --------------------------------------------------------------------- skeleton


def test_skeleton_dict_round_trip():
    sk = read_bvh(DATA / "two_joints.bvh").skeleton
    data = json.loads(json.dumps(sk.to_dict()))
    back = Skeleton.from_dict(data)
    assert back.names == sk.names and back.channels == sk.channels
    np.testing.assert_array_equal(back.parents, sk.parents)
    np.testing.assert_array_equal(back.offsets, sk.offsets)
    np.testing.assert_array_equal(back.end_parents, sk.end_parents)
    np.testing.assert_array_equal(back.end_offsets, sk.end_offsets)
    assert back.height() == sk.height() == 45.0  # 25 to the chest, 20 to its end


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("offsets"), "missing or bad field"),
        (lambda d: d.update(parents=[-1, 1]), "joint 1 has bad parent 1"),
        (
            lambda d: d.update(channels=[["Xposition"], ["Wrotation"]]),
            "unknown channel",
        ),
    ],
)
def test_skeleton_from_dict_rejects_bad_descriptions(change, message):
    data = read_bvh(DATA / "two_joints.bvh").skeleton.to_dict()
    change(data)
    with pytest.raises(ValueError, match=re.escape(message)):
        Skeleton.from_dict(data)


def test_skeleton_dict_round_trip_on_every_rig():
    if not CLIPS:
        pytest.skip(MISSING)
    for rig in RIG_FPS:
        sk = read_bvh(min((CLIPS_DIR / rig).rglob("*.bvh"))).skeleton
        back = Skeleton.from_dict(json.loads(json.dumps(sk.to_dict())))
        assert back.names == sk.names and back.channels == sk.channels, rig
        np.testing.assert_array_equal(back.offsets, sk.offsets)
        assert back.height() == sk.height()


@pytest.mark.parametrize(
    "change, line, message",
    [
        (("Frame Time: 0.04", "Frame Time: 1e-310"), 18, "frame time of at least"),
        (("Frames: 3", "Frames: " + "9" * 5000), 17, "whole frame count"),
        (("CHANNELS 3 Zrotation", "CHANNELS " + "9" * 5000 + " Zrotation"), 9,
         "channel count"),
    ],
)  # fmt: skip
def test_absurd_numbers_in_the_header_are_bvh_errors(tmp_path, change, line, message):
    original = (DATA / "two_joints.bvh").read_text()
    text = original.replace(*change)
    assert text != original
    path = tmp_path / "absurd.bvh"
    path.write_text(text)
    with pytest.raises(BVHError, match=f"absurd.bvh:{line}: .*{message}"):
        read_bvh(path)


def test_a_file_without_channels_cannot_claim_endless_frames(tmp_path):
    path = tmp_path / "empty_rows.bvh"
    path.write_text(
        "HIERARCHY\nROOT A\n{\n  OFFSET 0 0 0\n  CHANNELS 0\n  End Site\n  {\n"
        "    OFFSET 0 1 0\n  }\n}\nMOTION\nFrames: 99999999999\nFrame Time: 0.1\n"
    )
    with pytest.raises(BVHError, match="empty_rows.bvh:12: .*at most"):
        read_bvh(path)


def test_a_chain_of_thousands_of_joints_writes_and_reads_back(tmp_path):
    joints = 3000
    root = "CHANNELS 3 Zrotation Xrotation Yrotation"
    head = ["HIERARCHY", "ROOT J0", "{", "OFFSET 0 0 0", root]
    for j in range(1, joints):
        head += [f"JOINT J{j}", "{", "OFFSET 0 1 0", "CHANNELS 0"]
    head += ["}"] * joints
    head += ["MOTION", "Frames: 1", "Frame Time: 0.04", "10 20 30"]
    src = tmp_path / "chain.bvh"
    src.write_text("\n".join(head) + "\n")
    clip = read_bvh(src)
    write_bvh(tmp_path / "again.bvh", clip)
    again = read_bvh(tmp_path / "again.bvh")
    assert again.skeleton.names == clip.skeleton.names
    assert np.array_equal(again.motion, clip.motion)
