"""What the server keeps per open stream, and frames of many streams at once.

A push stream's frames are computed before they fall due, so they leave on time;
the streams due together are computed together: every model call of the pose
solver runs once per solver stage for all of them (see
:func:`motionode.generate.channels_together`), with each stream's rows bit for bit
what it would get alone.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.conventions import ChannelMap
from bridge.timeline import Timeline
from motionode.generate import PoseStream, channels_together

logger = logging.getLogger(__name__)

__all__ = ["Stream", "rows_together"]


@dataclass(eq=False)
class Stream:
    """One open stream. ``end`` is set, by either thread, once it must finish."""

    id: int
    owner: bytes  # routing id of the connection that opened it
    mode: str
    fps: float | None
    start: float
    poses: Any  # the model's PoseStream
    info: bytes  # JSON payload of the stream's skeleton messages
    convert: ChannelMap  # rig channels -> the client's convention
    last_seen: float
    clock0: float | None = None  # server clock at which frame 0 fell due
    frontier: float = 0.0  # latest time a pull has asked for, seconds
    next_seq: int = 0
    late: bool = False
    end: str | None = None
    velocities: bool = False  # frames and pulls carry channel derivatives too
    window: int = 0  # a recording's frames allowed in flight unacknowledged
    allowed: int = 0  # a recording may send frames below this seq
    timeline: Timeline = field(default_factory=Timeline)  # stream -> motion time
    # Rows (n, C) or (n, 2C) of frames next_seq .. next_seq + n - 1, computed
    # before they fall due. A speed change drops them.
    ahead: np.ndarray | None = None
    fields: dict = field(default_factory=dict)  # the open reply, for ``streams``
    # Held while the pose generator or the timeline is used: the stream thread
    # computes a push stream's frames while the control thread may switch it.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def time_of(self, seq: int | np.ndarray) -> float | np.ndarray:
        return self.start + seq / self.fps

    def ready(self) -> int:
        """Frames from ``next_seq`` on whose rows are computed."""
        return 0 if self.ahead is None else len(self.ahead)

    def rows(self, times: np.ndarray, continuous: bool) -> np.ndarray:
        """Channel rows (T, C) at stream times (T,), or (T, 2C) with their
        derivatives per second of stream time (the motion's times the speed);
        call with ``lock`` held."""
        motion = self.timeline.motion(times)  # (T,)
        if not self.velocities:
            rows = self.poses.channels_at(motion, continuous=continuous)  # (T, C)
            return self.convert.apply(rows)
        rows = self.poses.channels_at(motion, continuous, velocities=True)  # (T, 2C)
        half = rows.shape[1] // 2
        rows[:, half:] *= self.timeline.speeds(times)[:, None]
        return self.convert.apply_with_velocities(rows[:, :half], rows[:, half:])

    def control_time(self) -> float:
        """Stream time from which a control takes effect: the next frame's for a
        push stream, the latest time asked for a pull stream."""
        return self.frontier if self.mode == "pull" else self.time_of(self.next_seq)


def rows_together(jobs: list[tuple[Stream, np.ndarray]]) -> list[np.ndarray | None]:
    """Principal channel rows of each (stream, stream times (T,)) job, as
    ``stream.rows(times, continuous=False)`` gives them; call with every job's
    stream lock held.

    Streams without velocities are solved together; streams with them one by one
    (their derivatives are taken per time), as are other pose sources. When the joint solve fails, each
    stream is tried alone, so one failing stream cannot take the others down: its
    entry is None, with the failure logged.
    """
    out: list[np.ndarray | None] = [None] * len(jobs)
    together = [
        i
        for i, (s, _) in enumerate(jobs)
        if not s.velocities and isinstance(s.poses, PoseStream)
    ]
    alone = sorted(set(range(len(jobs))) - set(together))
    if together:
        try:
            requests = [
                (jobs[i][0].poses, jobs[i][0].timeline.motion(jobs[i][1]))
                for i in together
            ]
            for i, rows in zip(together, channels_together(requests)):
                out[i] = jobs[i][0].convert.apply(rows)
        except Exception:
            logger.debug(
                "frames of %d streams together failed", len(together), exc_info=True
            )
            alone = together + alone
    for i in alone:
        stream, times = jobs[i]
        try:
            out[i] = stream.rows(times, continuous=False)
        except Exception:
            logger.exception(
                "stream %d: the model failed at t = %.6f s", stream.id, times[0]
            )
    return out
