"""Import BVH files with Blender's bundled importer, headless, and save the poses.

Run with a Python that has Blender as a module (``pip install bpy``, Python 3.11):

    python tests/blender_import.py JOB.json

JOB.json holds ``{"imports": [IMPORT, ...]}``; each IMPORT is a dict with

    bvh           path of the BVH file
    npz           path to write the result to
    frames        0-based BVH frame indices to sample, or null for every frame
    global_scale  the importer's Scale (default 1.0)
    axis_forward  the importer's Forward axis (default "-Z", the importer's default)
    axis_up       the importer's Up axis (default "Y", the importer's default)
    rotate_mode   the importer's Rotation (default "NATIVE", the importer's default)

Each import starts from an empty factory scene and calls ``bpy.ops.import_anim.bvh``
with target ARMATURE, frame_start 1, use_fps_scale off (one BVH
frame per Blender frame, so BVH frame ``f`` is keyed at Blender frame ``f + 1``) and
update_scene_fps on (it only sets the scene's rate; it turns frame scaling off).
Every requested frame is then evaluated with ``scene.frame_set`` and each pose bone's
head and tail are read in world space (``matrix_world @ pose_bone.head``).

The npz holds:

    bone_names    (B,) str, the armature's bones in Blender's order
    bone_parents  (B,) int, index of each bone's parent, -1 for none
    heads, tails  (K, B, 3) float64 world positions (Blender stores float32)
    frames        (K,) int, BVH frame index of each row
    keys          int, keyframes on the animation curves (the frames imported)
    axis_matrix   (3, 3) float64, the importer's axis conversion
    scene_fps     float, the scene's frame rate after the import
    version       str, Blender's version
    seconds       float, time spent importing
    error         str, empty unless the import failed (then nothing else is set)

This file imports ``bpy`` only when run, so it never touches the caller's Python.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback

import numpy as np

logger = logging.getLogger("blender_import")


def import_one(job: dict) -> dict:
    """Import one BVH file into an empty scene; the arrays described above."""
    import bpy
    from bpy_extras.io_utils import axis_conversion

    bpy.ops.wm.read_factory_settings(use_empty=True)
    forward, up = job.get("axis_forward", "-Z"), job.get("axis_up", "Y")
    start = time.perf_counter()
    bpy.ops.import_anim.bvh(
        filepath=job["bvh"],
        target="ARMATURE",
        global_scale=job.get("global_scale", 1.0),
        frame_start=1,
        use_fps_scale=False,
        update_scene_fps=True,
        update_scene_duration=False,
        use_cyclic=False,
        rotate_mode=job.get("rotate_mode", "NATIVE"),
        axis_forward=forward,
        axis_up=up,
    )
    seconds = time.perf_counter() - start
    scene = bpy.context.scene
    arm = next(o for o in scene.objects if o.type == "ARMATURE")
    action = arm.animation_data.action if arm.animation_data else None
    keys = {len(c.keyframe_points) for c in action.fcurves} if action else {0}
    if len(keys) != 1:
        raise RuntimeError(f"curves disagree on their keyframe counts: {keys}")
    (num_keys,) = keys

    # The pose read back at each asked frame, one bulk read per frame.
    names = [b.name for b in arm.pose.bones]
    index = {n: i for i, n in enumerate(names)}
    parents = [index[b.parent.name] if b.parent else -1 for b in arm.pose.bones]
    frames = job.get("frames")
    frames = list(range(max(num_keys, 1))) if frames is None else list(frames)
    num_bones = len(names)
    heads = np.zeros((len(frames), num_bones, 3))
    tails = np.zeros((len(frames), num_bones, 3))
    buf = np.zeros(num_bones * 3, dtype=np.float32)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    for k, f in enumerate(frames):
        scene.frame_set(f + 1)
        evaluated = arm.evaluated_get(depsgraph)
        world = np.array(evaluated.matrix_world, dtype=np.float64)  # (4, 4)
        for what, out in (("head", heads), ("tail", tails)):
            evaluated.pose.bones.foreach_get(what, buf)
            local = buf.reshape(num_bones, 3).astype(np.float64)
            out[k] = local @ world[:3, :3].T + world[:3, 3]

    axis = np.array(axis_conversion(from_forward=forward, from_up=up), dtype=float)
    return {
        "bone_names": np.array(names, dtype=str),
        "bone_parents": np.array(parents, dtype=int),
        "heads": heads,
        "tails": tails,
        "frames": np.array(frames, dtype=int),
        "keys": np.array(num_keys),
        "axis_matrix": axis,
        "scene_fps": np.array(scene.render.fps / scene.render.fps_base),
        "version": np.array(bpy.app.version_string),
        "seconds": np.array(seconds),
        "error": np.array(""),
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="blender_import: %(message)s"
    )
    if len(argv) != 2:
        logger.error("usage: python blender_import.py JOB.json")
        return 2
    with open(argv[1], encoding="utf-8") as f:
        imports = json.load(f)["imports"]
    for job in imports:
        try:
            result = import_one(job)
        except Exception:
            # Keep going: one broken import must not hide the others' results.
            logger.exception("%s: import failed", job["bvh"])
            result = {"error": np.array(traceback.format_exc())}
        np.savez(job["npz"], **result)
        logger.info("%s: done", job["bvh"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
