"""Operators: connect, disconnect, build or match an armature, record, install
pyzmq.

Operators that wait (record, install) run modal from the interface, polling on a
timer so Blender stays responsive, and blocking with a deadline when called from
a script (``bpy.ops.motionode.record()`` runs ``execute``).
"""

from __future__ import annotations

import logging
import math
import threading
import time

import bpy
import numpy as np
from bpy.props import BoolProperty, FloatProperty, StringProperty

from . import armature, deps, session
from .session import SESSION, scene_time

logger = logging.getLogger(__name__)

MODAL_TICK_S = 0.05  # how often modal operators look for progress
RECORD_TIMEOUT_S = 120.0  # a script's record gives up after this long
INSTALL_STATE: dict = {"message": "", "ok": None}  # the latest install, for the panel


def _need_skeleton(op: bpy.types.Operator) -> bool:
    if SESSION.skeleton is None:
        op.report({"ERROR"}, "Connect to a motionode server first")
        return False
    return True


class MOTIONODE_OT_connect(bpy.types.Operator):
    """Connect to the motionode server and drive the armature from it"""

    bl_idname = "motionode.connect"
    bl_label = "Connect"

    def execute(self, context):
        try:
            SESSION.connect(context.scene)
        except (RuntimeError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class MOTIONODE_OT_disconnect(bpy.types.Operator):
    """Disconnect from the server; the armature and any recorded take stay"""

    bl_idname = "motionode.disconnect"
    bl_label = "Disconnect"

    def execute(self, context):
        SESSION.disconnect()
        return {"FINISHED"}


class MOTIONODE_OT_build_armature(bpy.types.Operator):
    """Add an armature built from the server's skeleton and drive it"""

    bl_idname = "motionode.build_armature"
    bl_label = "Build Armature"
    bl_options = frozenset({"REGISTER", "UNDO"})

    def execute(self, context):
        if not _need_skeleton(self):
            return {"CANCELLED"}
        # The pose at time 0 gives moving joints their rest place (see rig).
        reference = SESSION.pose_at(0.0)
        obj = armature.build_armature(context, SESSION.skeleton, reference)
        context.scene.motionode_live.armature = obj
        SESSION.frame_changed(context.scene)
        self.report({"INFO"}, f"Built {obj.name} with {len(obj.data.bones)} bones")
        return {"FINISHED"}


class MOTIONODE_OT_match_bones(bpy.types.Operator):
    """Map the server's joints onto the bones of the armature by name"""

    bl_idname = "motionode.match_bones"
    bl_label = "Match Bones"
    bl_options = frozenset({"REGISTER", "UNDO"})

    def execute(self, context):
        if not _need_skeleton(self):
            return {"CANCELLED"}
        settings = context.scene.motionode_live
        obj = settings.armature
        active = context.object
        if obj is None and active is not None and active.type == "ARMATURE":
            obj = settings.armature = active
        if obj is None:
            self.report({"ERROR"}, "Choose an armature (or select one) first")
            return {"CANCELLED"}
        report = armature.match_bones(obj, SESSION.skeleton)
        matched = len(armature.driven_bones(obj, SESSION.skeleton))
        total = SESSION.skeleton.num_joints
        level = {"WARNING"} if report else {"INFO"}
        self.report(level, f"Matched {matched} of {total} joints. {report}".strip())
        SESSION.frame_changed(context.scene)
        return {"FINISHED"}


class MOTIONODE_OT_record(bpy.types.Operator):
    """Key the server's poses into a new action, one key per frame, from the
    current frame (or over the scene's range)"""

    bl_idname = "motionode.record"
    bl_label = "Record"
    bl_options = frozenset({"UNDO"})

    use_scene_range: BoolProperty(
        name="Scene Range", description="Record the scene's frame range"
    )
    seconds: FloatProperty(
        name="Seconds", description="Seconds to record", default=10.0, min=0.0
    )

    def _plan(self, context) -> bool:
        """Frames and times to record; False (with a report) if impossible."""
        scene = context.scene
        settings = scene.motionode_live
        self.target = settings.armature
        if SESSION.link is None:
            self.report({"ERROR"}, "Connect to a motionode server first")
            return False
        if not _need_skeleton(self):
            return False
        if self.target is None or not armature.driven_bones(
            self.target, SESSION.skeleton
        ):
            self.report({"ERROR"}, "Build or match an armature first")
            return False
        if self.use_scene_range:
            first, last = scene.frame_start, scene.frame_end
        else:
            fps = scene.render.fps / scene.render.fps_base
            first = scene.frame_current
            last = first + math.floor(self.seconds * fps + 1e-6)
        self.frames = np.arange(first, last + 1)
        self.times = [scene_time(scene, float(f)) for f in self.frames]
        self.rows: dict[float, np.ndarray] = {}
        self.key = SESSION.key
        return True

    def _collect(self) -> list[float]:
        """Copy newly cached poses; returns the times still missing."""
        if SESSION.key != self.key:  # another stream or server: start over
            self.rows.clear()
            self.key = SESSION.key
        missing = []
        for t in self.times:
            if t not in self.rows:
                row = SESSION.pose_at(t)
                if row is None:
                    missing.append(t)
                else:
                    self.rows[t] = row
        return missing

    def _finish(self, context) -> set[str]:
        rows = np.stack([self.rows[t] for t in self.times])  # (T, C)
        settings = context.scene.motionode_live
        name = f"motionode {settings.source} seed {settings.seed}"
        action = armature.write_action(
            self.target, SESSION.skeleton, self.frames, rows, name
        )
        action["source"] = settings.source
        action["seed"] = settings.seed
        # Live poses would hide the take on every keyed bone: pause them.
        settings.live = False
        self.report(
            {"INFO"},
            f"Recorded {len(self.frames)} frames into '{action.name}'; Live is off "
            f"so the take plays",
        )
        return {"FINISHED"}

    def execute(self, context):
        if not self._plan(context):
            return {"CANCELLED"}
        deadline = time.monotonic() + RECORD_TIMEOUT_S
        while missing := self._collect():
            if time.monotonic() > deadline or SESSION.state == "error":
                self.report(
                    {"ERROR"},
                    f"Record: {len(missing)} of {len(self.times)} poses did not "
                    f"arrive ({SESSION.state}: {SESSION.message})",
                )
                return {"CANCELLED"}
            SESSION.want(missing)
            SESSION.tick()
            time.sleep(session.TICK_S)
        return self._finish(context)

    def invoke(self, context, event):
        settings = context.scene.motionode_live
        self.use_scene_range = settings.record_scene_range
        self.seconds = settings.record_seconds
        if not self._plan(context):
            return {"CANCELLED"}
        self._timer = context.window_manager.event_timer_add(
            MODAL_TICK_S, window=context.window
        )
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            self._end(context)
            self.report({"WARNING"}, "Record cancelled")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        missing = self._collect()
        if SESSION.link is None:
            self._end(context)
            self.report({"ERROR"}, "Record: disconnected before every pose came")
            return {"CANCELLED"}
        if missing:
            SESSION.want(missing)
            done = len(self.times) - len(missing)
            context.workspace.status_text_set(
                f"motionode: recording, {done} of {len(self.times)} poses "
                f"({SESSION.message}); Esc cancels"
            )
            return {"RUNNING_MODAL"}
        self._end(context)
        return self._finish(context)

    def _end(self, context) -> None:
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)


class MOTIONODE_OT_install_pyzmq(bpy.types.Operator):
    """Install pyzmq into Blender's own Python with pip (needs the network)"""

    bl_idname = "motionode.install_pyzmq"
    bl_label = "Install pyzmq"

    requirement: StringProperty(
        name="Requirement",
        description="What pip installs, e.g. 'pyzmq' or 'pyzmq==26.*'",
        default=deps.REQUIREMENT,
    )

    def execute(self, context):
        ok, message = deps.run_install(self.requirement, deps.install_target())
        return self._done(ok, message)

    def _done(self, ok: bool, message: str) -> set[str]:
        INSTALL_STATE["message"] = message
        INSTALL_STATE["ok"] = ok
        self.report({"INFO"} if ok else {"ERROR"}, message)
        return {"FINISHED"} if ok else {"CANCELLED"}

    def invoke(self, context, event):
        result: list[tuple[bool, str]] = []
        requirement, target = self.requirement, deps.install_target()
        self._thread = threading.Thread(
            target=lambda: result.append(deps.run_install(requirement, target)),
            name="motionode-pip",
            daemon=True,
        )
        self._result = result
        self._thread.start()
        INSTALL_STATE["message"] = f"installing {requirement} with pip..."
        self._timer = context.window_manager.event_timer_add(
            MODAL_TICK_S * 4, window=context.window
        )
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER" or self._thread.is_alive():
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        for area in context.screen.areas if context.screen else ():
            area.tag_redraw()
        ok, message = self._result[0] if self._result else (False, "pip did not run")
        return self._done(ok, message)


CLASSES = (
    MOTIONODE_OT_connect,
    MOTIONODE_OT_disconnect,
    MOTIONODE_OT_build_armature,
    MOTIONODE_OT_match_bones,
    MOTIONODE_OT_record,
    MOTIONODE_OT_install_pyzmq,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
