"""Blender's own BVH importer, run headless, agrees with our reading and writing.

Blender runs as a Python module (``bpy`` from PyPI) in a child process,
``tests/blender_import.py``, which imports each file with
``bpy.ops.import_anim.bvh`` and saves every pose bone's world head and tail per
frame to an .npz file. A child process because ``bpy`` keeps one global Blender
session per process, because a crash inside Blender must not take pytest down with
it, and because bpy 4.5 needs numpy < 2 while motionode runs on numpy 2: its Python
may be another environment, named by ``MOTIONODE_BPY_PYTHON`` (default: the Python
running the tests).

What is compared. Each file is imported twice, with the importer's defaults
(axis_forward "-Z", axis_up "Y", global_scale 1, rotate_mode NATIVE: Euler angles
in each joint's order; use_fps_scale off, so BVH frame f is Blender frame f + 1) and
again with rotate_mode QUATERNION. The importer maps a BVH point ``p`` to
``k * M @ p`` in Blender's world, with ``k`` the global scale (one file unit becomes
k Blender units, metres) and

    M = [[1, 0, 0],
         [0, 0, -1],
         [0, 1, 0]]        (x, y, z) -> (x, -z, y): +90 degrees about X,

which is exactly ``motionode.axes.axis_matrix("raw", "blender")`` (checked against
the importer's own matrix each run). Our side is ``Clip.world_positions`` through
``axes.convert_positions(..., "raw", "blender", units_to_m=k)``. Errors are reported
as a fraction of ``Skeleton.height()`` (times k); Blender computes in float32, so a
few 1e-7 is its floor (see ``TOLERANCE`` for what it reaches and why).

Importer behaviour the comparison accounts for:

- Bone names: whitespace runs inside a joint name become one "_"; a repeated name
  gets ".001", ".002" (also when that makes it clash with a later joint's name);
  Blender cuts names to 63 bytes and suffixes clashes. ``blender_bone_names`` gives
  the name each joint gets, and bones are matched to joints by it.
- End Sites make no bone: a joint's (last) End Site becomes its bone's tail, so end
  sites are compared through tails. An End Site no longer than 0.001 (zero-length
  bones) is moved by the importer to make a bone, so that tail is not compared.
- Bone roll and rest orientation come from head and tail, and every pose rotation is
  conjugated by that rest orientation: heads and tails do not depend on it, except
  through float32 rounding, which is worst for bones pointing straight down -Y.
- Axis options: the importer turns the file's ``axis_up`` into +Z and its
  ``axis_forward`` into +Y, while a character in Blender faces -Y; so a file in a
  convention whose character faces ``f`` is imported with ``axis_forward = -f``
  (for BVH rigs facing +Z, the default "-Z").
- Frame rate: keys are one per Blender frame whatever the file's frame time;
  update_scene_fps (on here) only sets the scene rate to 1 / Frame Time unrounded,
  e.g. 120.005 for "0.008333", where ``Clip.fps`` snaps to 120.
- A joint with one or two rotation channels cannot be imported at all (the
  importer looks its axis order up in a table of full orders: KeyError).
- A joint with one or two position channels gets 0 for the missing axes, where
  motionode keeps the OFFSET component (the MotionBuilder reading).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from blender_env import find_blender

from motionode.axes import PROFILES, axis_matrix, convert_clip, convert_positions
from motionode.bvh import Clip, Skeleton, parse_bvh, read_bvh, write_bvh
from motionode.rotations import EULER_ORDERS

CLIPS_DIR = Path(__file__).parents[2] / "shared" / "data" / "bvh"
MISSING = f"shared clips not found at {CLIPS_DIR} (clone with shared/ beside the repo)"
HELPER = Path(__file__).with_name("blender_import.py")
# Worst joint error allowed, as a fraction of skeleton height, per way the importer
# stores pose rotations (rotate_mode). Blender works in float32. As quaternions,
# poses agree with ours to about 1e-6 (up to 4.2e-6 over every frame of the iClone
# clips: feet and toes, bones pointing straight down -Y at rest, where Blender's
# bone roll is least precise; the same motion written Z-up agrees 3x better). As
# Euler angles in each joint's own order (NATIVE, the importer's default), angles
# rounded to float32 near gimbal lock cost up to 1.3e-4 on a few frames, while the
# same frames stored as quaternions stay under 2e-6. A wrong axis, sign, rotation
# order or frame moves joints by 1e-3 to 1 of height.
TOLERANCE = {"QUATERNION": 1e-5, "NATIVE": 1e-3}
MODES = tuple(TOLERANCE)
RIGS = ("bandai", "cmu", "cmu_3dsmax", "cmu_cs19", "cmu_daz", "cmu_iclone")
# Two clips per rig for the quick run: short ones, both iClone header variants.
QUICK_CLIPS = {
    "bandai": ["dataset-1_walk-back_normal_001.bvh", "dataset-1_dash_active_001.bvh"],
    "cmu": ["02_01.bvh", "05_06.bvh"],
    "cmu_3dsmax": ["131_01.bvh", "131_03.bvh"],
    "cmu_cs19": ["10_01.bvh"],
    "cmu_daz": ["salsa/10.bvh", "martial/04.bvh"],
    "cmu_iclone": ["002_03.bvh", "006_08.bvh"],
}
QUICK_FRAMES = 40  # frames sampled per clip in the quick run, first and last included
# Written clips: mixed rotation orders and CRLF input; position channels everywhere.
WRITE_CLIPS = ["cmu_3dsmax/131_01.bvh", "bandai/dataset-1_dash_active_001.bvh"]
UNITS_TO_M = {"cmu_cs19/10_01.bvh": 0.0254, "cmu_daz/salsa/10.bvh": 0.01}


# ------------------------------------------------------------------ running Blender


def bpy_python() -> tuple[str | None, str]:
    return find_blender(with_zmq=False)


@pytest.fixture(scope="module")
def blender() -> str:
    if not CLIPS_DIR.is_dir():
        pytest.skip(MISSING)
    python, info = bpy_python()
    if python is None:
        pytest.skip(info)
    return python


def run_blender(
    python: str, imports: list[dict], tmp: Path, timeout: float = 600
) -> list[dict]:
    """Import each of ``imports`` (see blender_import.py) in one Blender process."""
    for i, job in enumerate(imports):
        job["npz"] = str(tmp / f"blender_{i}.npz")
        job["bvh"] = str(job["bvh"])
        if job.get("frames") is not None:
            job["frames"] = [int(f) for f in job["frames"]]
    job_file = tmp / "job.json"
    job_file.write_text(json.dumps({"imports": imports}), encoding="utf-8")
    run = subprocess.run(
        [python, str(HELPER), str(job_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
    )
    assert run.returncode == 0, f"Blender helper failed:\n{run.stderr[-3000:]}"
    results = []
    for job in imports:
        with np.load(job["npz"]) as data:
            results.append({k: data[k] for k in data.files})
    return results


def blender_bone_names(names: list[str]) -> list[str]:
    """The bone name Blender 4.5's BVH importer gives each joint of ``names``."""
    taken: set[str] = set()
    out: list[str] = []
    for name in names:
        base = "_".join(name.split())
        new, i = base, 0
        while new in taken:
            i += 1
            new = f"{base}.{i:03d}"
        taken.add(new)
        out.append(_unique(_cut(new, 63), out))
    return out


def _cut(name: str, size: int) -> str:
    """``name`` cut to at most ``size`` UTF-8 bytes, on a character boundary."""
    return name.encode("utf-8")[:size].decode("utf-8", errors="ignore")


def _unique(name: str, taken: list[str]) -> str:
    """Blender's clash rule: a free ".NNN" suffix, the stem cut to fit 63 bytes."""
    if name not in taken:
        return name
    match = re.fullmatch(r"(.*)\.(\d{3})", name)
    stem, number = (match[1], int(match[2])) if match else (name, 0)
    while True:
        number += 1
        suffix = f".{number:03d}"
        candidate = _cut(stem, 63 - len(suffix)) + suffix
        if candidate not in taken:
            return candidate


# ------------------------------------------------------------------ comparing


@dataclass
class Agreement:
    """Worst distance between Blender's and our positions over joints and frames."""

    worst: float  # as a fraction of skeleton height
    worst_abs: float  # in Blender units
    where: str  # frame and joint (or End Site) of the worst error
    heads: int  # joint positions compared
    tails: int  # End Site positions compared (through bone tails)
    skipped_tails: int  # End Sites the importer moves (zero-length bones)

    def line(self, label: str) -> str:
        return (
            f"{label}: worst {self.worst:.2e} of height ({self.worst_abs:.2e} "
            f"units, {self.where}); {self.heads} heads, {self.tails} end sites, "
            f"{self.skipped_tails} zero-length end sites skipped"
        )


def compare(
    skeleton: Skeleton, expected: np.ndarray, result: dict, scale: float
) -> Agreement:
    """Blender's heads and tails against ``expected`` (K, J + E, 3) positions.

    ``expected`` is already in Blender's space; ``scale`` is Blender units per file
    unit, for the skeleton height and the importer's zero-length rule.
    """
    assert not str(result["error"]), f"Blender import failed:\n{result['error']}"
    names = blender_bone_names(skeleton.names)
    got_names = [str(n) for n in result["bone_names"]]
    assert sorted(got_names) == sorted(names), (
        f"bones {sorted(set(got_names) ^ set(names))} differ from the joints"
    )
    bone = np.array([got_names.index(n) for n in names])  # joint -> bone
    parents = result["bone_parents"][bone]
    want_parents = [-1 if p < 0 else bone[p] for p in skeleton.parents]
    assert parents.tolist() == want_parents, "Blender's bone hierarchy differs"

    # End Sites seen as tails: the last one per joint, unless the importer moves it.
    num_joints = skeleton.num_joints
    ends, skipped = {}, 0
    for e, j in enumerate(skeleton.end_parents):
        ends[int(j)] = e
    for j, e in list(ends.items()):
        length = float(np.linalg.norm(skeleton.end_offsets[e]))
        if length <= 0.001 or length * scale < 0.001:
            del ends[j]
            skipped += 1
    heads = result["heads"][:, bone]  # (K, J, 3)
    tails = result["tails"][:, bone[list(ends)]]  # (K, E', 3)
    ours_heads = expected[:, :num_joints]
    ours_tails = expected[:, [num_joints + e for e in ends.values()]]

    err_heads = np.linalg.norm(heads - ours_heads, axis=-1)  # (K, J)
    err_tails = np.linalg.norm(tails - ours_tails, axis=-1)  # (K, E')
    err = np.concatenate([err_heads, err_tails], axis=1)
    k, i = np.unravel_index(int(np.argmax(err)), err.shape)
    labels = list(skeleton.names) + [f"End Site of {skeleton.names[j]}" for j in ends]
    height = skeleton.height() * scale
    return Agreement(
        float(err[k, i] / height),
        float(err[k, i]),
        f"frame {int(result['frames'][k])}, {labels[i]}",
        err_heads.size,
        err_tails.size,
        skipped,
    )


def expected_positions(
    clip: Clip, frames: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """Our (K, J + E, 3) positions at ``frames`` where the importer's defaults put
    them, with ``scale`` Blender units per file unit."""
    part = Clip(clip.skeleton, clip.motion[frames], clip.frame_time, clip.source)
    world_pos = part.world_positions(include_end_sites=True)
    return convert_positions(world_pos, "raw", "blender", units_to_m=scale)


def sample_frames(num_frames: int, count: int | None) -> np.ndarray:
    """``count`` frames spread over the clip, first and last included; None: all."""
    if count is None or num_frames <= count:
        return np.arange(num_frames)
    return np.unique(np.linspace(0, num_frames - 1, count).round().astype(int))


def read_clip(path: Path) -> Clip:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some headers miscount their frames
        return read_bvh(path)


@dataclass
class Case:
    """One file for Blender to import and where we say its joints must land."""

    label: str
    clip: Clip  # what the file holds (skeleton for names; frame count and time)
    expected: np.ndarray  # (K, J + E, 3) our positions in Blender's space
    job: dict  # the import (see blender_import.py), without rotate_mode
    scale: float = 1.0  # Blender units per file unit
    checked: dict[str, Agreement] = field(default_factory=dict)  # per rotate_mode


def file_case(label: str, path: Path, clip: Clip, frames: int | None) -> Case:
    """A clip file imported with the importer's default axes and scale."""
    pick = sample_frames(clip.num_frames, frames)
    return Case(
        label, clip, expected_positions(clip, pick), {"bvh": path, "frames": pick}
    )


def check(python: str, cases: list[Case], tmp: Path) -> list[Case]:
    """Import every case once per rotate mode in one Blender run and compare."""
    imports = [dict(case.job, rotate_mode=mode) for case in cases for mode in MODES]
    start = time.perf_counter()
    results = iter(run_blender(python, imports, tmp, timeout=3000))
    frames = sum(len(case.expected) for case in cases) * len(MODES)
    print(
        f"\nBlender: {len(imports)} imports, {frames} frames, "
        f"{time.perf_counter() - start:.1f} s"
    )
    for case in cases:
        for mode in MODES:
            result = next(results)
            assert not str(result["error"]), (
                f"{case.label}: Blender import failed:\n{result['error']}"
            )
            assert int(result["keys"]) == case.clip.num_frames, (
                f"{case.label}: Blender keyed {int(result['keys'])} frames"
            )
            if "axis_up" not in case.job:  # the importer's default axes: ours?
                assert np.allclose(
                    result["axis_matrix"],
                    axis_matrix("raw", "blender"),
                    rtol=0,
                    atol=1e-7,
                )
            # The scene rate is 1 / Frame Time unrounded (fps_base is float32).
            assert float(result["scene_fps"]) == pytest.approx(
                1 / case.clip.frame_time, rel=1e-6
            )
            case.checked[mode] = compare(
                case.clip.skeleton, case.expected, result, case.scale
            )
    return cases


def report(title: str, cases: list[Case]) -> None:
    """Print the worst agreement per rotate mode over ``cases``."""
    for mode in MODES:
        worst = max(cases, key=lambda case: case.checked[mode].worst)
        where = f" ({len(cases)} files, worst {worst.label})" if len(cases) > 1 else ""
        print(worst.checked[mode].line(f"{title} {mode}{where}"))


def assert_agree(cases: list[Case]) -> None:
    bad = [
        case.checked[mode].line(f"{case.label} {mode}")
        for case in cases
        for mode in MODES
        if case.checked[mode].worst > TOLERANCE[mode]
    ]
    assert not bad, (
        "Blender disagrees by more than "
        + ", ".join(f"{t} ({m})" for m, t in TOLERANCE.items())
        + " of height:\n"
        + "\n".join(bad)
    )


# ------------------------------------------------------------------ real clips


def real_cases(paths: list[Path], frames: int | None) -> dict[str, list[Case]]:
    """One case per real clip, grouped by rig."""
    by_rig: dict[str, list[Case]] = {}
    for path in paths:
        rel = path.relative_to(CLIPS_DIR).as_posix()
        case = file_case(rel, path, read_clip(path), frames)
        by_rig.setdefault(rel.split("/")[0], []).append(case)
    return by_rig


@pytest.fixture(scope="module")
def quick_real(blender, tmp_path_factory) -> dict[str, list[Case]]:
    paths = [CLIPS_DIR / rig / name for rig in RIGS for name in QUICK_CLIPS[rig]]
    by_rig = real_cases(paths, QUICK_FRAMES)
    check(
        blender,
        [c for cases in by_rig.values() for c in cases],
        tmp_path_factory.mktemp("real"),
    )
    return by_rig


@pytest.mark.parametrize("rig", RIGS)
def test_real_clips_agree(quick_real, rig):
    assert rig in quick_real, f"no {rig} clips found in {CLIPS_DIR}"
    report(rig, quick_real[rig])
    assert_agree(quick_real[rig])


@pytest.fixture(scope="module")
def every_real(blender, tmp_path_factory) -> dict[str, list[Case]]:
    by_rig = real_cases(sorted(CLIPS_DIR.rglob("*.bvh")), None)
    check(
        blender,
        [c for cases in by_rig.values() for c in cases],
        tmp_path_factory.mktemp("every"),
    )
    return by_rig


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("rig", RIGS)
def test_every_real_clip_and_frame_agrees(every_real, rig):
    assert rig in every_real, f"no {rig} clips found in {CLIPS_DIR}"
    report(rig, every_real[rig])
    assert_agree(every_real[rig])


# ------------------------------------------------------------------ written clips


def written_cases(rels: list[str], frames: int | None, tmp: Path) -> list[Case]:
    """Each clip (``frames`` of it) written as read and in every rotation order;
    Blender must place the joints where our FK of the clip in memory does."""
    cases = []
    for rel in rels:
        clip = read_clip(CLIPS_DIR / rel)
        pick = sample_frames(clip.num_frames, frames)
        part = Clip(clip.skeleton, clip.motion[pick], clip.frame_time, clip.source)
        for order in (None, *EULER_ORDERS):
            path = tmp / f"{rel.replace('/', '_')}_{order or 'asread'}.bvh"
            write_bvh(path, part, rotation_order=order)
            cases.append(
                file_case(f"{rel} written {order or 'as read'}", path, part, None)
            )
    return cases


def test_written_clips_agree_in_every_rotation_order(blender, tmp_path):
    cases = check(blender, written_cases(WRITE_CLIPS, QUICK_FRAMES, tmp_path), tmp_path)
    for order in ("as read", *EULER_ORDERS):
        report(f"written {order}", [c for c in cases if c.label.endswith(order)])
    assert_agree(cases)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_rig_written_in_every_rotation_order(blender, tmp_path):
    rels = [f"{rig}/{QUICK_CLIPS[rig][0]}" for rig in RIGS]
    cases = check(blender, written_cases(rels, None, tmp_path), tmp_path)
    for rig in RIGS:
        report(f"{rig} written", [c for c in cases if c.label.startswith(rig + "/")])
    assert_agree(cases)


def test_generated_clips_agree(blender, tmp_path):
    from motionode.generate import MotionModel

    model = MotionModel.load()
    cases = []
    for fps in (24, 60, 144):
        clip = model.open("prior", seed=0).clip(duration=2, fps=fps)
        assert clip.num_frames == 2 * fps + 1
        path = tmp_path / f"generated_{fps}.bvh"
        write_bvh(path, clip)
        cases.append(file_case(f"generated at {fps} fps", path, clip, None))
    check(blender, cases, tmp_path)
    for case in cases:
        report(case.label, [case])
    assert_agree(cases)


# ------------------------------------------------------------------ axes and units


def test_units_and_converted_clips_agree(blender, tmp_path):
    """Blender's global scale matches ``units_to_m``, and clips converted to the
    blender or godot profile, imported with the axes that profile documents, land
    where ``convert_positions`` puts the original in Blender's space."""
    cases = []
    for rel, units_to_m in UNITS_TO_M.items():
        clip = read_clip(CLIPS_DIR / rel)
        pick = sample_frames(clip.num_frames, QUICK_FRAMES)
        part = Clip(clip.skeleton, clip.motion[pick], clip.frame_time, clip.source)
        cases.append(
            Case(
                f"{rel} scaled by {units_to_m}",
                clip,
                expected_positions(clip, pick, scale=units_to_m),
                {"bvh": CLIPS_DIR / rel, "frames": pick, "global_scale": units_to_m},
                scale=units_to_m,
            )
        )

        # The importer turns the file's up into +Z and its forward into +Y, where
        # a character faces -Y: so its forward is the file's backward.
        want = expected_positions(part, np.arange(len(pick)), scale=units_to_m)
        for profile in ("blender", "godot"):
            conv = PROFILES[profile]
            converted = convert_clip(part, profile, units_to_m=units_to_m)
            path = tmp_path / f"{Path(rel).stem}_{profile}.bvh"
            write_bvh(path, converted)
            backward = ("-" if conv.forward[0] == "+" else "") + conv.forward[1]
            cases.append(
                Case(
                    f"{rel} converted to {profile}",
                    converted,
                    want,
                    {
                        "bvh": path,
                        "axis_forward": backward,
                        "axis_up": conv.up.lstrip("+"),
                    },
                )
            )
    check(blender, cases, tmp_path)
    for case in cases:
        report(case.label, [case])
    assert_agree(cases)


# ------------------------------------------------------------------ importer quirks


def test_joint_names_as_blender_spells_them(blender, tmp_path):
    clip = read_clip(CLIPS_DIR / "cmu_cs19" / "10_01.bvh")
    names = list(clip.skeleton.names)
    names[1:5] = ["Left  Hip", "Left.Knee", "ns:LeftAnkle", "Spine"]
    # Distinct here, but "Left_Hip" meets "Left  Hip" once Blender drops spaces.
    names[7:11] = ["Left_Hip", "Spine.001", "C" * 70, "C" * 70 + "2"]
    sk = Skeleton(
        names,
        clip.skeleton.parents,
        clip.skeleton.offsets,
        clip.skeleton.channels,
        clip.skeleton.end_parents,
        clip.skeleton.end_offsets,
    )
    pick = sample_frames(clip.num_frames, 10)
    renamed = Clip(sk, clip.motion[pick], clip.frame_time, clip.source)
    path = tmp_path / "names.bvh"
    write_bvh(path, renamed)
    (result,) = run_blender(blender, [{"bvh": path}], tmp_path)

    got = [str(n) for n in result["bone_names"]]
    assert got[:11] == [
        "Hips",
        "Left_Hip",
        "Left.Knee",
        "ns:LeftAnkle",
        "Spine",
        names[5],
        names[6],
        "Left_Hip.001",
        "Spine.001",
        "C" * 63,
        "C" * 59 + ".001",
    ]
    assert got == blender_bone_names(names)
    agreement = compare(
        sk, expected_positions(renamed, np.arange(len(pick))), result, 1.0
    )
    assert agreement.worst <= TOLERANCE["NATIVE"], agreement.line("renamed joints")


PARTIAL = """\
HIERARCHY
ROOT Hips
{{
  OFFSET 1 2 3
  CHANNELS {root}
  JOINT Arm
  {{
    OFFSET 1 0 0
    CHANNELS {arm}
    End Site
    {{
      OFFSET 1 0 0
    }}
  }}
}}
MOTION
Frames: 2
Frame Time: 0.1
{rows}
"""


def test_partial_position_channels_zero_the_missing_axes(blender, tmp_path):
    text = PARTIAL.format(
        root="5 Xposition Zposition Zrotation Yrotation Xrotation",
        arm="3 Zrotation Yrotation Xrotation",
        rows="0.5 0.25 10 20 30 40 50 60\n0.5 0.25 11 21 31 41 51 61",
    )
    clip = parse_bvh(text)
    path = tmp_path / "partial_position.bvh"
    path.write_text(text, encoding="utf-8")
    (result,) = run_blender(blender, [{"bvh": path}], tmp_path)

    # Ours keeps OFFSET's y = 2 for the root; Blender puts the root at y = 0.
    frames = np.arange(2)
    ours = compare(clip.skeleton, expected_positions(clip, frames), result, 1.0)
    assert ours.worst_abs == pytest.approx(2.0, abs=1e-5)
    zeroed = Skeleton(
        clip.skeleton.names,
        clip.skeleton.parents,
        clip.skeleton.offsets * [[1, 0, 1], [1, 1, 1]],
        clip.skeleton.channels,
        clip.skeleton.end_parents,
        clip.skeleton.end_offsets,
    )
    model = Clip(zeroed, clip.motion, clip.frame_time)
    blender_reading = compare(zeroed, expected_positions(model, frames), result, 1.0)
    assert blender_reading.worst <= TOLERANCE["NATIVE"]


def test_partial_rotation_channels_are_refused(blender, tmp_path):
    text = PARTIAL.format(
        root="6 Xposition Yposition Zposition Zrotation Yrotation Xrotation",
        arm="2 Zrotation Xrotation",
        rows="0 0 0 10 20 30 40 50\n0 0 0 11 21 31 41 51",
    )
    parse_bvh(text)  # motionode reads it: the missing axis is zero
    path = tmp_path / "partial_rotation.bvh"
    path.write_text(text, encoding="utf-8")
    (result,) = run_blender(blender, [{"bvh": path}], tmp_path)
    assert "KeyError: (2, 0, None)" in str(result["error"])
