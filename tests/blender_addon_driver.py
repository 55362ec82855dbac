"""Drive the motionode live add-on inside Blender, headless, and save what it did.

Run with a Python that has Blender as a module (``pip install bpy``) and pyzmq:

    python tests/blender_addon_driver.py JOB.json

JOB.json holds:

    addon_dir   folder holding the ``motionode_live`` package (the repo's blender/)
    mode        "live" (default) or "deps"
    npz         path to write the results to
    endpoint    the server's control socket (live)
    source, seed
    rates       list of {"fps", "fps_base", "frame_start", "speed", "frames"}: each
                scene rate, playback speed and the frames to visit, in order (live)
    record      {"fps", "frame_start", "seconds"}: record from frame_start (live)
    bvh         where Blender's BVH exporter writes the recorded take (live)
    outage      {"frame": F}: a frame first shown after the server is stopped (live)
    picture     a PNG path to render the take to, or "" (live)
    requirement what the pyzmq install button is asked to install (deps)

"live" enables the add-on from ``addon_dir``, connects, builds the armature and
visits every frame of every rate, reading each bone's world head once the add-on
has posed it. It maps the skeleton onto a second armature with renamed, turned,
missing and extra bones and poses that. It records, disconnects, checks the take
stays, exports it with ``bpy.ops.export_anim.bvh``, then connects again and waits
while the test stops and restarts the server. Timers do not run in a Blender without a window, so the
driver calls the add-on's timer function itself, as Blender would, and times it.

"deps" hides pyzmq before enabling the add-on and checks what the user is told:
by the panel, by Connect, and by the install button when pip fails.

The test and the driver talk over stdin and stdout: the driver writes a line
``@driver: NAME`` and waits for one line back. Everything else on stdout is
Blender's. The npz holds what ``run_live`` or ``run_deps`` below collect, and
``error`` (empty unless the driver failed).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path

import numpy as np

logger = logging.getLogger("blender_addon_driver")

PREFIX = "@driver: "
TICK_SLEEP_S = 0.002  # between two calls of the add-on's timer function


def tell(name: str) -> str:
    """Send ``name`` to the test and return its one-line answer."""
    sys.stdout.write(f"{PREFIX}{name}\n")
    sys.stdout.flush()
    return sys.stdin.readline().strip()


def enable_addon(addon_dir: str):
    """Enable the add-on as Blender's preferences do; returns its module."""
    import addon_utils

    sys.path.insert(0, addon_dir)
    errors: list[str] = []
    module = addon_utils.enable(
        "motionode_live", default_set=True, handle_error=lambda e: errors.append(e)
    )
    if module is None:
        raise RuntimeError(f"enabling motionode_live failed: {errors}")
    return module


def disable_addon() -> None:
    """Unregister the add-on (and its frame handler: bpy 4.5 does not exit while
    a Python frame handler that has run is still registered)."""
    import addon_utils

    addon_utils.disable("motionode_live", default_set=True)


class Pump:
    """Calls the add-on's timer function until a condition holds, timing it."""

    def __init__(self, session) -> None:
        self.session = session
        self.worst_tick = 0.0  # longest single call, seconds
        self.ticks: list[float] = []  # every call's duration, seconds

    def until(self, done, timeout: float, what: str) -> float:
        """Seconds until ``done()`` held; TimeoutError after ``timeout``."""
        start = time.monotonic()
        while True:
            t0 = time.perf_counter()
            self.session.SESSION.tick()
            self.ticks.append(time.perf_counter() - t0)
            self.worst_tick = max(self.worst_tick, self.ticks[-1])
            if done():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                s = self.session.SESSION
                raise TimeoutError(
                    f"{what}: not within {timeout:g} s; status {s.state}: {s.message}"
                )
            time.sleep(TICK_SLEEP_S)


def joint_heads(obj, bones: list[str]) -> np.ndarray:
    """(J, 3) world heads of ``bones``, as evaluated."""
    import bpy

    bpy.context.view_layer.update()
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    world = np.array(evaluated.matrix_world, dtype=np.float64)  # (4, 4)
    local = np.array([evaluated.pose.bones[b].head for b in bones], dtype=np.float64)
    return local @ world[:3, :3].T + world[:3, 3]


def fcurves(action) -> list:
    """Every F-curve of ``action``: of its layers (Blender 4.4+) or its own."""
    if getattr(action, "is_action_layered", False):
        return [
            curve
            for layer in action.layers
            for strip in layer.strips
            for bag in strip.channelbags
            for curve in bag.fcurves
        ]
    return list(action.fcurves)


def check_panels(module, problem_expected: bool) -> list[str]:
    """Draw every panel of the add-on into a recording layout; return the labels.

    A window-less Blender cannot draw, so the layout is a stand-in that accepts
    every layout call and checks that each property it is asked to show exists.
    """
    import bpy

    labels: list[str] = []

    class Layout:
        def __getattr__(self, name):
            def call(*args, **kwargs):
                if name in ("prop", "prop_search") and not hasattr(args[0], args[1]):
                    raise AttributeError(f"layout.{name}: no property {args[1]!r}")
                if name == "label":
                    labels.append(kwargs.get("text", ""))
                return Layout()

            return call

        def __setattr__(self, name, value):
            pass

    class Stand:
        layout = Layout()

    for cls in module.ui.CLASSES:
        if issubclass(cls, bpy.types.Panel):
            if hasattr(cls, "poll") and not cls.poll(bpy.context):
                continue
            cls.draw(Stand(), bpy.context)
    joined = " ".join(labels)
    if problem_expected != ("pyzmq does not import" in joined):
        raise AssertionError(f"panel labels: {labels}")
    return labels


# ------------------------------------------------------------------ live


def run_live(job: dict) -> dict:
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    module = enable_addon(job["addon_dir"])
    from motionode_live import session

    scene = bpy.context.scene
    settings = scene.motionode_live
    settings.endpoint = job["endpoint"]
    settings.server_key = job.get("server_key", "")
    settings.client_secret = job.get("client_secret", "")
    settings.source = job["source"]
    settings.seed = job["seed"]
    pump = Pump(session)
    out: dict = {}

    # Connect, and build the armature once the pose at time 0 is in.
    start = time.monotonic()
    bpy.ops.motionode.connect()
    out["connect_call_s"] = time.monotonic() - start
    live = session.SESSION
    out["connect_s"] = pump.until(lambda: live.connected, 30, "connect")
    pump.until(lambda: live.pose_at(0.0) is not None, 30, "pose at time 0")
    bpy.ops.motionode.build_armature()
    obj = settings.armature
    bones = [item.bone for item in obj.motionode_live.mapping]
    out["bone_names"] = np.array(bones)
    out["joint_names"] = np.array([item.joint for item in obj.motionode_live.mapping])
    out["rest_heads"] = np.array([obj.data.bones[b].head_local for b in bones])
    labels = check_panels(module, problem_expected=False)
    out["panel_labels"] = np.array(labels)

    # Every asked frame at every scene rate, in the asked order.
    for k, rate in enumerate(job["rates"]):
        scene.render.fps, scene.render.fps_base = rate["fps"], rate["fps_base"]
        scene.frame_start = rate["frame_start"]
        settings.speed = rate.get("speed", 1.0)
        times, heads, waits = [], [], []
        for frame in rate["frames"]:
            scene.frame_set(frame)
            t = session.scene_time(scene)
            waits.append(pump.until(lambda t=t: live.shown == t, 30, f"frame {frame}"))
            times.append(t)
            heads.append(joint_heads(obj, bones))
        out[f"rate{k}_times"] = np.array(times)
        out[f"rate{k}_heads"] = np.array(heads)  # (F, J, 3)
        out[f"rate{k}_waits"] = np.array(waits)
    out["worst_tick_s"] = pump.worst_tick
    out.update(drive_other_armature(scene, pump))
    settings.armature = obj

    # Record, disconnect: the take stays and plays.
    rec = job["record"]
    scene.render.fps, scene.render.fps_base = rec["fps"], 1.0
    settings.speed = 1.0
    scene.frame_start = rec["frame_start"]
    scene.frame_set(rec["frame_start"])
    start = time.monotonic()
    bpy.ops.motionode.record(seconds=rec["seconds"], use_scene_range=False)
    out["record_s"] = time.monotonic() - start
    bpy.ops.motionode.disconnect()
    action = obj.animation_data.action
    curves = fcurves(action)
    out["record_action"] = np.array(action.name)
    out["record_curves"] = np.array([f"{c.data_path}[{c.array_index}]" for c in curves])
    out["record_keys"] = np.array(
        [[p.co[0] for p in c.keyframe_points] for c in curves]
    )  # (curves, T)
    out["live_after_record"] = np.array(settings.live)
    frames = range(rec["frame_start"], int(max(out["record_keys"][0])) + 1)
    take = []
    for frame in frames:
        scene.frame_set(frame)
        take.append(joint_heads(obj, bones))
    out["take_frames"] = np.array(list(frames))
    out["take_heads"] = np.array(take)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.export_anim.bvh(
        filepath=job["bvh"],
        check_existing=False,
        frame_start=frames[0],
        frame_end=frames[-1],
        rotate_mode="NATIVE",
        root_transform_only=False,
    )

    if job.get("picture"):
        render_picture(scene, obj, frames, job["picture"])

    # Live again; the test stops the server, then starts a new one.
    settings.live = True
    out["action_after_live"] = np.array(
        obj.animation_data.action.name if obj.animation_data.action else ""
    )
    bpy.ops.motionode.connect()
    pump.until(lambda: live.connected, 30, "reconnect")
    frame = job["outage"]["frame"]
    tell("stop-server")
    pump.worst_tick = 0.0
    scene.frame_set(frame)
    t = session.scene_time(scene)
    out["outage_lost_s"] = pump.until(lambda: live.state == "lost", 30, "loss")
    out["outage_message"] = np.array(live.message)
    out["outage_panel"] = np.array(check_panels(module, problem_expected=False))
    out["outage_shown"] = np.array(live.shown == t)
    tell("start-server")
    out["outage_back_s"] = pump.until(lambda: live.shown == t, 60, "back")
    out["outage_worst_tick_s"] = pump.worst_tick
    out["outage_time"] = t
    out["outage_heads"] = joint_heads(obj, bones)
    bpy.ops.motionode.disconnect()
    disable_addon()
    out["tick_s"] = np.array(pump.ticks)
    return out


RENAMED = {"Hips": "mixamorig:Hips", "Spine": "spine", "UpperArm_L": "upper arm.L"}


def drive_other_armature(scene, pump: Pump) -> dict:
    """Another armature: some bones renamed, others rolled or turned, one missing,
    one extra, the object moved and turned. Match bones, then pose it."""
    import bpy
    from mathutils import Vector
    from motionode_live import session

    settings = scene.motionode_live
    bpy.ops.motionode.build_armature()
    other = settings.armature
    bpy.context.view_layer.objects.active = other
    bpy.ops.object.mode_set(mode="EDIT")
    bones = other.data.edit_bones
    for old, new in RENAMED.items():
        bones[old].name = new
    bones["LowerArm_L"].roll = 1.2
    bones["Chest"].tail = bones["Chest"].head + Vector((0.0, 0.05, 0.1))
    bones.remove(bones["Toes_L"])
    prop = bones.new("Prop")
    prop.head = bones["Hand_R"].tail
    prop.tail = prop.head + Vector((0.0, 0.0, 0.2))
    prop.parent = bones["Hand_R"]
    bpy.ops.object.mode_set(mode="OBJECT")
    other.location = (2.0, 0.0, 0.0)
    other.rotation_euler = (0.0, 0.0, 1.5707963267948966)
    bpy.ops.motionode.match_bones()

    mapping = [(item.joint, item.bone) for item in other.motionode_live.mapping]
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.frame_start = 1
    settings.speed = 1.0
    live = session.SESSION
    times, heads = [], []
    for frame in (1, 13, 25):
        scene.frame_set(frame)
        t = session.scene_time(scene)
        pump.until(lambda t=t: live.shown == t, 30, f"other armature, frame {frame}")
        mapped = [bone for _, bone in mapping if bone]
        got = iter(joint_heads(other, mapped))
        heads.append([next(got) if bone else [np.nan] * 3 for _, bone in mapping])
        times.append(t)
    return {
        "other_mapping": np.array(mapping),
        "other_report": np.array(other.motionode_live.report),
        "other_times": np.array(times),
        "other_heads": np.array(heads),  # (T, J, 3), NaN for unmapped joints
        "other_matrix_world": np.array(other.matrix_world),
    }


def render_picture(scene, obj, frames, path: str) -> None:
    """Render the take as a strip of stick figures, one every few frames, with
    Workbench, to ``path`` (PNG)."""
    import bmesh
    import bpy
    from mathutils import Matrix, Vector

    poses = list(frames)[::8]
    pose_bones = obj.pose.bones
    figures = []
    for k, frame in enumerate(poses):
        scene.frame_set(frame)
        bpy.context.view_layer.update()
        world = obj.matrix_world
        mesh = bmesh.new()
        for bone in pose_bones:
            head = world @ bone.head
            # The root's rod to the hips would cross the floor: leave it out.
            ends = [world @ bone.tail] if not bone.children else []
            if bone.parent is not None and bone.parent.parent is not None:
                ends.append(world @ bone.parent.head)
            for end in ends:
                rod = end - head
                if rod.length < 1e-4:
                    continue
                made = bmesh.ops.create_cone(
                    mesh,
                    cap_ends=True,
                    segments=10,
                    radius1=0.022,
                    radius2=0.022,
                    depth=rod.length,
                )
                place = Matrix.Translation((head + end) / 2) @ (
                    Vector((0, 0, 1)).rotation_difference(rod).to_matrix().to_4x4()
                )
                bmesh.ops.transform(mesh, matrix=place, verts=made["verts"])
            if bone.parent is None:
                continue  # the root stays on the floor where the walk began
            ball = bmesh.ops.create_uvsphere(
                mesh, u_segments=12, v_segments=8, radius=0.03
            )
            bmesh.ops.translate(mesh, vec=head, verts=ball["verts"])
        data = bpy.data.meshes.new(f"pose {frame}")
        mesh.to_mesh(data)
        mesh.free()
        figure = bpy.data.objects.new(f"pose {frame}", data)
        share = k / max(1, len(poses) - 1)
        figure.color = (0.15 + 0.75 * share, 0.35, 0.85 - 0.6 * share, 1.0)
        scene.collection.objects.link(figure)
        figures.append(figure)

    # A floor, and a camera looking across the walk.
    corners = np.array(
        [f.matrix_world @ Vector(c) for f in figures for c in f.bound_box]
    )
    low, high = corners.min(axis=0), corners.max(axis=0)
    middle = (low + high) / 2
    bpy.ops.mesh.primitive_plane_add(size=1, location=(middle[0], middle[1], 0))
    floor = bpy.context.object
    floor.scale = (high[0] - low[0] + 2, high[1] - low[1] + 2, 1)
    floor.color = (0.95, 0.95, 0.92, 1)
    travel = Vector(corners[:, :2].ptp(axis=0).tolist()).normalized()
    across = Vector((-travel[1], travel[0], 0)) if travel.length else Vector((1, 0, 0))
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(camera)
    width, height = 960, 400
    along = float(np.abs((high - low)[:2] @ np.array(travel[:2])))
    camera.data.type = "ORTHO"
    camera.data.ortho_scale = max(along + 1.0, (high[2] + 0.5) * width / height)
    target = Vector((middle[0], middle[1], high[2] / 2))
    camera.location = target + 8 * across + Vector((0, 0, 1.5))
    look = target - camera.location
    camera.rotation_euler = look.to_track_quat("-Z", "Y").to_euler()
    scene.camera = camera

    scene.render.engine = "BLENDER_WORKBENCH"
    shading = scene.display.shading
    shading.light, shading.color_type = "STUDIO", "OBJECT"
    shading.show_shadows = True
    if scene.world is None:
        scene.world = bpy.data.worlds.new("world")
    scene.world.color = (1.0, 1.0, 1.0)
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.compression = 100
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    for figure in figures:
        bpy.data.objects.remove(figure)
    bpy.data.objects.remove(floor)
    bpy.data.objects.remove(camera)


# ------------------------------------------------------------------ deps


class _HideZmq:
    """An import hook under which ``import zmq`` fails, as without pyzmq."""

    def find_spec(self, name, path=None, target=None):
        if name == "zmq" or name.startswith("zmq."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")


def run_deps(job: dict) -> dict:
    import bpy

    for name in [m for m in sys.modules if m == "zmq" or m.startswith("zmq.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _HideZmq())
    bpy.ops.wm.read_factory_settings(use_empty=True)
    module = enable_addon(job["addon_dir"])
    out = {"panel_labels": np.array(check_panels(module, problem_expected=True))}
    try:
        bpy.ops.motionode.connect()
        out["connect_error"] = np.array("")
    except RuntimeError as exc:
        out["connect_error"] = np.array(str(exc))
    start = time.monotonic()
    try:
        bpy.ops.motionode.install_pyzmq(requirement=job["requirement"])
        out["install_error"] = np.array("")
    except RuntimeError as exc:
        out["install_error"] = np.array(str(exc))
    out["install_s"] = time.monotonic() - start
    disable_addon()
    return out


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s"
    )
    if len(argv) != 2:
        logger.error("usage: python blender_addon_driver.py JOB.json")
        return 2
    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    try:
        result = run_deps(job) if job.get("mode") == "deps" else run_live(job)
        result["error"] = np.array("")
    except Exception:
        # Report instead of raising: bpy may not exit after an uncaught error.
        logger.exception("driver failed")
        result = {"error": np.array(traceback.format_exc())}
        try:
            disable_addon()
        except Exception:
            logger.exception("disabling the add-on failed too")
    np.savez(job["npz"], **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
