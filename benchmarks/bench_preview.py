"""Cost of a robot preview: control-rate sampling, feasibility checks, meshes.

Run by hand: ``python benchmarks/bench_preview.py [--seconds 4]``. Prints, per
control rate, the wall-clock seconds to sample the default model (poses plus the
neighbours its velocities need) and a bundled clip, and to run every check on
the result; then the time to write one GLB pose.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from motionode import preview
from motionode.bvh import read_bvh
from motionode.feasibility import check_motion, find_floor, foot_joints, load_limits
from motionode.generate import MotionModel, assets_dir
from motionode.meshes import bone_segments, build_bones, pose_scene, write_glb


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 200, 500])
    args = parser.parse_args()

    model = MotionModel.load()
    limits = load_limits(assets_dir() / "limits" / "bandai_human.json")
    clip = read_bvh(assets_dir() / "clips" / "dataset-1_walk_normal_001.bvh")
    cfg = limits.bodies
    print(f"{'rate':>6} {'samples':>8} {'model s':>8} {'clip s':>7} {'checks s':>9}")
    for rate in args.rates:
        stream = model.open("clip:dataset-1_walk_normal_001", seed=0)
        traj, model_s = timed(preview.sample_stream, stream, rate, args.seconds)
        _, clip_s = timed(preview.sample_clip, clip, rate, args.seconds)
        bones = build_bones(
            traj.skeleton,
            traj.units_to_m,
            traj.base,
            cfg.radius_m,
            cfg.default_radius_m,
            cfg.end_length_m,
        )
        feet = foot_joints(traj.skeleton, limits.contact, traj.base)
        _, check_s = timed(
            check_motion, traj, limits, bones, find_floor(traj, "zero", feet), feet
        )
        print(
            f"{rate:>6g} {len(traj.times):>8} {model_s:>8.2f} {clip_s:>7.2f} "
            f"{check_s:>9.2f}"
        )

    seg = bone_segments(bones, traj.world_pos[0], traj.world_rot[0])
    with tempfile.TemporaryDirectory() as tmp:
        _, glb_s = timed(lambda: write_glb(Path(tmp) / "p.glb", pose_scene(bones, seg)))
    print(f"one GLB pose ({len(bones)} capsules): {glb_s:.3f} s")


if __name__ == "__main__":
    main()
