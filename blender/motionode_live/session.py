"""The live session on Blender's main thread: scene time, pose cache, handlers.

At a frame change the scene's stream time is

    t = speed * (frame - frame_start) / (fps / fps_base)

(frame including any subframe; times before the start are clamped to 0). If the
pose at ``t`` is cached it is applied at once; otherwise it is asked for, with the
following frames' times, and a timer that polls the network thread without
waiting applies it when it comes. Poses are principal-angle rows, functions of
their time alone (PROTOCOL.md, "Angle values"), so a cached pose is exact whenever
its time comes round again.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import bpy
import numpy as np

from . import deps
from .wire import SkeletonDesc

if TYPE_CHECKING:
    from .link import Hello, Link

logger = logging.getLogger(__name__)

__all__ = ["SESSION", "Session", "scene_time"]

TICK_S = 0.02  # how often the timer polls the network thread
PREFETCH_S = 0.5  # stream seconds asked for ahead of the current frame
CACHE_POSES = 20000  # poses kept, most recently used first


def scene_time(scene: bpy.types.Scene, frame: float | None = None) -> float:
    """Stream time in seconds of ``frame`` (default: the current one, subframe
    included) under the scene's frame rate and playback speed setting."""
    if frame is None:
        frame = scene.frame_current_final
    fps = scene.render.fps / scene.render.fps_base
    speed = scene.motionode_live.speed
    return max(0.0, speed * (frame - scene.frame_start) / fps)


def _redraw() -> None:
    """Redraw 3D views, so the panel's status and the new pose show at once."""
    wm = bpy.context.window_manager
    for window in wm.windows if wm is not None else ():
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class Session:
    """One connection per Blender process, shared by every scene.

    Attributes:
        state: "disconnected", "connecting", "connected", "lost", "error".
        message: the latest status line for people.
        skeleton: the server's skeleton, once connected.
        sources: the server's sources, once connected.
        stream_endpoint: where the server publishes push streams (shown only).
        shown: stream time of the pose on the armature now, or None.
        pending: stream time wanted on the armature and not yet there, or None.
    """

    def __init__(self) -> None:
        self.link: Link | None = None
        self.state = "disconnected"
        self.message = ""
        self.skeleton: SkeletonDesc | None = None
        self.sources: list[str] = []
        self.stream_endpoint = ""
        self.generation = 0
        self.key: tuple | None = None
        self.cache: OrderedDict[float, np.ndarray] = OrderedDict()
        self.shown: float | None = None
        self.pending: float | None = None
        self._scene_name: str | None = None  # the scene the session plays into

    # ------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self.link is not None and self.state == "connected"

    def connect(self, scene: bpy.types.Scene) -> None:
        """Start talking to the scene's server (returns at once).

        Raises:
            RuntimeError: pyzmq does not import.
            ValueError: the endpoint is malformed, or a CURVE key is unreadable.
        """
        problem = deps.zmq_problem()
        if problem is not None:
            raise RuntimeError(problem)
        from .link import CurveKeys, Link

        self.disconnect()
        settings = scene.motionode_live
        keys = None
        if settings.server_key.strip() or settings.client_secret.strip():
            keys = CurveKeys.load(
                settings.server_key, bpy.path.abspath(settings.client_secret)
            )
        link = Link(settings.endpoint, settings.source, settings.seed, keys=keys)
        self.link, self._scene_name = link, scene.name
        self._set_status("connecting", f"connecting to {link.endpoint}")
        link.start()
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=TICK_S, persistent=True)

    def disconnect(self) -> None:
        """Stop the network thread; the armature keeps its last pose."""
        if self.link is not None:
            self.link.close()
            self.link = None
        if bpy.app.timers.is_registered(_tick):
            bpy.app.timers.unregister(_tick)
        self.pending = None
        self._set_status("disconnected", "")

    def settings_changed(self, scene: bpy.types.Scene) -> None:
        """Source or seed changed: open a new stream for them."""
        if self.link is None or scene.name != self._scene_name:
            return
        settings = scene.motionode_live
        self.link.set_stream(settings.source, settings.seed)
        self.cache.clear()
        self.shown = None
        self._set_status(
            "connecting", f"opening {settings.source}, seed {settings.seed}"
        )

    def _set_status(self, state: str, message: str) -> None:
        if (state, message) != (self.state, self.message):
            self.state, self.message = state, message
            _redraw()

    # ------------------------------------------------------------ poses

    def scene(self) -> bpy.types.Scene | None:
        return bpy.data.scenes.get(self._scene_name) if self._scene_name else None

    def target(self, scene: bpy.types.Scene) -> bpy.types.Object | None:
        """The armature the scene's stream drives, if live and set."""
        settings = scene.motionode_live
        obj = settings.armature
        if not settings.live or obj is None or obj.type != "ARMATURE":
            return None
        return obj

    def frame_changed(self, scene: bpy.types.Scene) -> None:
        """Show the pose of the scene's current time, now or once it arrives."""
        if self.link is None or scene.name != self._scene_name:
            return
        if self.target(scene) is None:
            self.pending = None
            return
        t = scene_time(scene)
        if self.show(scene, t):
            self.pending = None
        else:
            self.pending = t
        fps = scene.render.fps / scene.render.fps_base
        ahead = math.ceil(PREFETCH_S * fps)
        frame = scene.frame_current_final
        times = [t] + [scene_time(scene, frame + k) for k in range(1, ahead + 1)]
        self.want(times)

    def want(self, times: list[float]) -> None:
        """Ask for the poses at ``times`` that are not cached, in that order."""
        if self.link is not None:
            self.link.want([t for t in times if t not in self.cache])

    def pose_at(self, t: float) -> np.ndarray | None:
        """The cached (C,) float32 pose at stream time ``t``, or None."""
        row = self.cache.get(t)
        if row is not None:
            self.cache.move_to_end(t)
        return row

    def show(self, scene: bpy.types.Scene, t: float) -> bool:
        """Pose the scene's armature at ``t`` if cached; True if the pose is on."""
        from .armature import apply_pose

        obj = self.target(scene)
        row = self.pose_at(t)
        if obj is None or row is None or self.skeleton is None:
            return False
        apply_pose(obj, self.skeleton, row)
        self.shown = t
        return True

    def resume_live(self, scene: bpy.types.Scene) -> None:
        """Live turned on: take a recorded take off the armature (it stays in the
        file, with a fake user) so live poses are not overridden, and pose."""
        from .armature import TAKE_KEY

        obj = scene.motionode_live.armature
        anim = obj.animation_data if obj is not None else None
        if anim is not None and anim.action is not None and TAKE_KEY in anim.action:
            anim.action = None
        self.frame_changed(scene)

    # ------------------------------------------------------------ timer

    def tick(self) -> float | None:
        """Take in what the network thread reported; apply a pose that was waited
        for. Never waits. Returns the timer's next interval, or None to stop."""
        if self.link is None:
            return None
        from .link import Hello, Poses, Status

        for event in self.link.events():
            if isinstance(event, Status):
                if event.state == "closed":
                    continue
                self._set_status(event.state, event.message)
            elif isinstance(event, Hello):
                self._take_hello(event)
            elif isinstance(event, Poses) and event.generation == self.generation:
                for t, row in zip(event.times.tolist(), event.rows):
                    self.cache[t] = row
                    self.cache.move_to_end(t)
                while len(self.cache) > CACHE_POSES:
                    self.cache.popitem(last=False)
        scene = self.scene()
        pending = self.pending
        if scene is not None and pending is not None and self.show(scene, pending):
            self.pending = None
            _redraw()
        return TICK_S

    def _take_hello(self, event: Hello) -> None:
        self.generation = event.generation
        if event.key != self.key:
            self.cache.clear()
            self.shown = None
        self.key = event.key
        if self.skeleton is not None and (
            self.skeleton.fingerprint() != event.skeleton.fingerprint()
        ):
            logger.warning("the server's skeleton changed; rebuild or re-match bones")
        self.skeleton = event.skeleton
        self.sources = list(event.info.get("sources", []))
        self.stream_endpoint = str(event.info.get("stream_endpoint", ""))
        scene = self.scene()
        if scene is not None:
            self.frame_changed(scene)
        if self.link is not None:
            self.want([*self.link.wanted(), 0.0])  # Build Armature's reference pose


SESSION = Session()


def _tick() -> float | None:
    """The timer: polls the session; logs and carries on if applying fails."""
    try:
        return SESSION.tick()
    except Exception:
        logger.exception("motionode live: tick failed")
        return TICK_S


@bpy.app.handlers.persistent
def on_frame_change(scene, depsgraph=None) -> None:
    try:
        SESSION.frame_changed(scene)
    except Exception:
        logger.exception("motionode live: frame change failed")


@bpy.app.handlers.persistent
def on_load(*args) -> None:
    """A new file: nothing of the old scene is driven any more."""
    SESSION.disconnect()


def register() -> None:
    bpy.app.handlers.frame_change_pre.append(on_frame_change)
    bpy.app.handlers.load_pre.append(on_load)


def unregister() -> None:
    SESSION.disconnect()
    for handlers, fn in (
        (bpy.app.handlers.frame_change_pre, on_frame_change),
        (bpy.app.handlers.load_pre, on_load),
    ):
        while fn in handlers:
            handlers.remove(fn)
