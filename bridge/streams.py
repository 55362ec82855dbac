"""What the server keeps per open stream, and the thread that computes frames.

Frames are computed by a solver thread before they fall due, and sent by the
stream thread when they do: sending never waits for the model, so a frame leaves
on time as long as the solver keeps ahead. The solver computes the frames of all
streams together: every model call of the pose solver runs once per solver stage
for all of them (see :func:`motionode.generate.channels_together`), with each
stream's rows bit for bit what it would get alone.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.conventions import ChannelMap
from bridge.timeline import Timeline
from motionode.generate import PoseStream, channels_together

logger = logging.getLogger(__name__)

__all__ = ["Solver", "Stream", "rows_together"]

MAX_AHEAD = 32  # frames per stream computed before they are sent, at most
# Push frames are computed up to this long before they fall due, and computing
# starts again when the soonest uncomputed frame is half of it away: four times
# the longest batch of the last COST_MEMORY seconds (a segment start makes a
# batch several times the others), within these bounds (seconds).
MIN_LOOKAHEAD, MAX_LOOKAHEAD = 0.1, 0.3
COST_MEMORY = 5.0
# A stream whose frames are further apart in motion time than this (seconds) is
# computed on its own, in slices, so its solver steps never hold the others back.
HEAVY_FRAME_MOTION = 0.05
SLICE_MOTION_S = 0.1  # seconds of motion a heavy stream or recording solves per pass
RECORD_BATCH = 4  # a recording's frames per pass
IDLE_WAIT = 0.05  # longest sleep of the solver, so it stops promptly
SOLVER_NICE = 10  # how much lower the solver thread's CPU priority is (Linux nice)


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
    first_seq: int = 0  # the first frame: 0, or that of the snapshot it opened from
    late: bool = False
    end: str | None = None
    velocities: bool = False  # frames and pulls carry channel derivatives too
    window: int = 0  # a recording's frames allowed in flight unacknowledged
    allowed: int = 0  # a recording may send frames below this seq
    timeline: Timeline = field(default_factory=Timeline)  # stream -> motion time
    # (seq, row) of frames computed and not yet sent, from next_seq on; rows are
    # (C,) values, or (2C,) with their derivatives. A speed change drops them.
    ahead: deque = field(default_factory=deque)
    computed_to: int = 0  # the next frame the solver computes
    fields: dict = field(default_factory=dict)  # the open reply, for ``streams``
    # Held while the pose generator or the timeline is used: the solver thread
    # computes frames while the control thread may pull, switch or change speed.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Held while frames are taken from or put into ``ahead``, and next_seq moves.
    # Order: ``lock`` before ``send_lock``, never the other way round.
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def time_of(self, seq: int | np.ndarray) -> float | np.ndarray:
        return self.start + seq / self.fps

    def due(self, seq: int, now: float | None = None) -> float:
        """Server clock at which push frame ``seq`` falls due: the first frame (0,
        or a snapshot's) at ``clock0``, one every 1/fps; a stream nobody has
        subscribed to yet counts as starting ``now``."""
        return self._clock0(now) + (seq - self.first_seq) / self.fps

    def last_due(self, clock: float) -> int:
        """The last frame that falls due at or before ``clock`` (server clock)."""
        return self.first_seq + math.floor((clock - self._clock0()) * self.fps + 1e-9)

    def _clock0(self, now: float | None = None) -> float:
        if self.clock0 is not None:
            return self.clock0
        return time.monotonic() if now is None else now

    def heavy(self) -> bool:
        return self.timeline.speed / self.fps > HEAVY_FRAME_MOTION

    def drop_computed(self) -> None:
        """Forget frames computed and not sent; call with both locks held."""
        self.ahead.clear()
        self.computed_to = self.next_seq

    def solved_near(self, times: np.ndarray) -> bool:
        """Whether the motion is solved to within SLICE_MOTION_S of stream times
        (T,); if not, solve one more such slice of it (poses of those times stay
        what they would have been), so a frame far ahead in motion is reached over
        several passes, between other streams' frames. Call with ``lock`` held."""
        target = float(self.timeline.motion(times).max())
        reached = max(self.poses.latest, 0.0)
        if target - reached <= SLICE_MOTION_S:
            return True
        self.poses.states(np.array([reached + SLICE_MOTION_S]))
        return False

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
    (their derivatives are taken per time), as are other pose sources. When the
    joint solve fails, each stream is tried alone, so one failing stream cannot
    take the others down: its entry is None, with the failure logged.
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


def _lower_priority() -> None:
    """Give the calling thread a lower CPU priority (Linux: threads have their
    own nice value), so that sending frames, ZeroMQ's I/O and the clients on
    this machine run the moment they are ready while the solver computes."""
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + SOLVER_NICE
        )
    except (AttributeError, OSError) as exc:  # not on this platform, or not allowed
        logger.debug("solver: priority left as it is: %s", exc)


# TODO: one thread solves about 190 streams at 60 fps in float64 (90 us a frame);
# hundreds more need float32 serving or solving on more than one core.
class Solver:
    """Computes the frames of push streams and recordings before they are sent.

    Light push streams are computed in one batch once the soonest uncomputed frame
    is half the lookahead away, up to the lookahead; then heavy streams' next
    frames and recordings' next few, in slices of motion. Frames go into each
    stream's ``ahead`` queue; the stream thread sends them.

    Args:
        streams: the open streams, called each pass.
        ready: called after frames were added, to wake the stream thread.
        stopping: set when the server stops.
    """

    def __init__(
        self,
        streams: Callable[[], list[Stream]],
        ready: Callable[[], None],
        stopping: threading.Event,
    ) -> None:
        self._streams = streams
        self._ready = ready
        self._stopping = stopping
        self._work = threading.Event()
        self.costs: deque[tuple[float, float]] = deque()  # (end, seconds) a batch
        self.lookahead = MIN_LOOKAHEAD

    def poke(self) -> None:
        """Something changed (a subscriber, an acknowledgement, a speed): look
        again now."""
        self._work.set()

    def run(self) -> None:
        _lower_priority()
        while not self._stopping.is_set():
            try:
                wait = self.step()
            except Exception:
                logger.exception("solver: unexpected failure; carrying on")
                wait = IDLE_WAIT
            self._work.wait(min(max(wait, 0.0), IDLE_WAIT))
            self._work.clear()

    def step(self) -> float:
        """One pass; return how long to wait before the next (seconds)."""
        streams = [s for s in self._streams() if s.end is None and s.mode != "pull"]
        now = time.monotonic()
        # A push stream's first frames are computed before anyone subscribes, as
        # if the first subscriber came now: frame times do not depend on it.
        light = [s for s in streams if s.mode == "push" and not s.heavy()]
        others = [
            s
            for s in streams
            if s.clock0 is not None and (s.mode == "record" or s.heavy())
        ]
        soonest = min(
            (self._next_due(s, now) for s in light if self._room(s)),
            default=math.inf,
        )
        wait = soonest - self.lookahead / 2 - now
        if wait <= 0:
            self._light(light, now + self.lookahead)
            wait = 0.0
        busy = False
        for s in others:
            busy |= self._alone(s, now + self.lookahead)
            if self._stopping.is_set():
                break
            if s.mode == "push" and self._room(s):
                wait = min(wait, self._next_due(s, now) - self.lookahead / 2 - now)
        return 0.0 if busy else wait

    @staticmethod
    def _next_due(s: Stream, now: float) -> float:
        """When the stream's first uncomputed frame falls due (server clock)."""
        return s.due(s.computed_to, now)

    @staticmethod
    def _room(s: Stream) -> bool:
        return s.computed_to - s.next_seq < MAX_AHEAD

    def _light(self, light: list[Stream], horizon: float) -> None:
        """Compute every light stream's frames that fall due before ``horizon``
        (server clock) and are not computed yet, all in one batch."""
        held = [s for s in light if s.lock.acquire(blocking=False)]
        began = time.monotonic()
        try:
            jobs = []
            for s in held:
                first = s.computed_to
                last = min(max(first, s.last_due(horizon)), s.next_seq + MAX_AHEAD - 1)
                if s.end is None and first <= last:
                    jobs.append((s, np.arange(first, last + 1)))
            rows = rows_together([(s, s.time_of(seqs)) for s, seqs in jobs])
            for (s, seqs), values in zip(jobs, rows):
                self._keep(s, seqs, values)
        finally:
            for s in held:
                s.lock.release()
        if held:
            self._ready()
        end = time.monotonic()
        self.costs.append((end, end - began))
        while self.costs[0][0] < end - COST_MEMORY:
            self.costs.popleft()
        longest = max(cost for _, cost in self.costs)
        self.lookahead = min(MAX_LOOKAHEAD, max(MIN_LOOKAHEAD, 4 * longest))

    def _alone(self, s: Stream, horizon: float) -> bool:
        """Work on a heavy stream's frames due before ``horizon`` (server clock),
        or a recording's next few, a slice of motion at a time; return whether
        more is left to do now."""
        motion_per_frame = max(s.timeline.speed, 1e-9) / s.fps
        if s.mode == "record":
            wanted = s.allowed - s.computed_to
        else:
            wanted = max(s.last_due(horizon) + 1 - s.computed_to, int(not s.ahead))
        count = min(
            RECORD_BATCH,
            wanted,
            MAX_AHEAD - (s.computed_to - s.next_seq),
            max(1, int(SLICE_MOTION_S / motion_per_frame)),
        )
        if count <= 0 or not s.lock.acquire(blocking=False):
            return False
        try:
            seqs = np.arange(s.computed_to, s.computed_to + count)
            times = s.time_of(seqs)
            if s.end is not None or not s.solved_near(times):
                return s.end is None
            (values,) = rows_together([(s, times)])
            self._keep(s, seqs, values)
        finally:
            s.lock.release()
        self._ready()
        if s.mode == "record":
            return s.allowed > s.computed_to
        return s.last_due(horizon) >= s.computed_to and self._room(s)

    @staticmethod
    def _keep(s: Stream, seqs: np.ndarray, values: np.ndarray | None) -> None:
        """Queue computed rows (T, ...) of frames ``seqs``; a failed computation
        ends the stream. Call with the stream's ``lock`` held."""
        if values is None:
            s.end = "error"
            return
        with s.send_lock:
            if seqs[0] != s.computed_to:  # a speed change dropped what came before
                return
            s.ahead.extend(zip(seqs.tolist(), values))
            s.computed_to = int(seqs[-1]) + 1
