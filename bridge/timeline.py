"""Playback speed: motion time as a function of stream time.

A stream's frames are spaced by stream time (``start + seq / fps``), which keeps
pace with the wall clock. The pose of a frame is the model's pose at the frame's
*motion time*, which advances at the stream's speed: a continuous, piecewise linear
function of stream time with one piece per speed change. Continuity makes a speed
change free of pose jumps; only the rate of motion changes.
"""

from __future__ import annotations

import logging

import numpy as np

from bridge.protocol import MAX_SPEED
from motionode.snapshots import SnapshotError, read_float, read_list, write_float

logger = logging.getLogger(__name__)

__all__ = ["MAX_PIECES", "Timeline"]

MAX_PIECES = 256  # speed pieces one snapshot may carry


class Timeline:
    """Motion time of any stream time >= 0, under a history of speed changes.

    Before the first change motion time equals stream time (speed 1), exactly.
    """

    def __init__(self) -> None:
        # TODO: a pull stream keeps every piece, since it may ask for any earlier
        # time; a client changing speed every frame for hours grows this by 24
        # bytes a change and slows each lookup a little (log of the count).
        # Piece i starts at stream time _t[i], motion time _m[i], at speed _s[i].
        self._t = [0.0]
        self._m = [0.0]
        self._s = [1.0]

    @property
    def speed(self) -> float:
        """The current speed: that of the latest piece."""
        return self._s[-1]

    def _pieces(self, times: np.ndarray) -> np.ndarray:
        i = np.searchsorted(np.asarray(self._t), times, side="right") - 1
        return np.maximum(i, 0)

    def motion(self, times: np.ndarray | float) -> np.ndarray:
        """Motion times (T,) float64 of stream times (T,) float64, seconds."""
        times = np.asarray(times, dtype=np.float64).reshape(-1)  # (T,)
        i = self._pieces(times)
        t0, m0, s = (np.asarray(a)[i] for a in (self._t, self._m, self._s))
        return m0 + s * (times - t0)

    def speeds(self, times: np.ndarray | float) -> np.ndarray:
        """Speed (T,) float64 at stream times (T,); a change's own time has the
        new speed."""
        times = np.asarray(times, dtype=np.float64).reshape(-1)  # (T,)
        return np.asarray(self._s)[self._pieces(times)]

    def stream_time(self, motion: float) -> float | None:
        """The first stream time at or after the latest change whose motion time is
        ``motion`` (>= the change's own); None while paused, when it never comes."""
        if self._s[-1] == 0:
            return None if motion > self._m[-1] else self._t[-1]
        return self._t[-1] + (motion - self._m[-1]) / self._s[-1]

    def set_speed(self, at: float, speed: float) -> float:
        """Play at ``speed`` from stream time ``at`` on; return the motion time there.

        Raises:
            ValueError: ``speed`` outside [0, MAX_SPEED], or ``at`` before the latest
                change (the past is never rewritten).
        """
        if not 0.0 <= speed <= MAX_SPEED:
            raise ValueError(
                f"speed: expected a number from 0 to {MAX_SPEED:g}, got {speed!r}"
            )
        if at < self._t[-1]:
            raise ValueError(
                f"at: {at!r} s is before the latest speed change ({self._t[-1]!r} s)"
            )
        motion = float(self.motion(at)[0])
        if at == self._t[-1]:
            self._s[-1] = float(speed)
        else:
            self._t.append(float(at))
            self._m.append(motion)
            self._s.append(float(speed))
        logger.debug("speed %g from stream time %.6f (motion %.6f)", speed, at, motion)
        return motion

    def forget_before(self, at: float) -> None:
        """Drop pieces that end before stream time ``at`` (never asked again)."""
        keep = max(0, int(self._pieces(np.array([at]))[0]))
        del self._t[:keep], self._m[:keep], self._s[:keep]

    @property
    def first(self) -> float:
        """Stream time of the earliest piece kept: motion times are known from
        there on."""
        return self._t[0]

    def snapshot(self, at: float) -> list[list[str]]:
        """The pieces from the one holding stream time ``at`` (>= :attr:`first`)
        on, as ``[t, motion, speed]`` hex float strings each (see
        :mod:`motionode.snapshots`)."""
        keep = int(self._pieces(np.array([at]))[0])
        return [
            [write_float(t), write_float(m), write_float(s)]
            for t, m, s in zip(self._t[keep:], self._m[keep:], self._s[keep:])
        ]

    @classmethod
    def restore(cls, pieces: object, field: str = "timeline") -> Timeline:
        """A timeline of the pieces :meth:`snapshot` wrote: motion times of stream
        times from the first piece's on are the original's, bit for bit.

        Raises:
            SnapshotError: naming the field of a malformed piece, times not
                increasing, motion times going back, or a speed out of range.
        """
        items = read_list(field, pieces, MAX_PIECES)
        if not items:
            raise SnapshotError(field, "expected at least one piece")
        out = cls()
        out._t, out._m, out._s = [], [], []
        for i, piece in enumerate(items):
            where = f"{field}[{i}]"
            if not (isinstance(piece, list) and len(piece) == 3):
                raise SnapshotError(where, "expected [time, motion time, speed]")
            t = read_float(f"{where}[0]", piece[0], 0.0)
            m = read_float(f"{where}[1]", piece[1], 0.0)
            s = read_float(f"{where}[2]", piece[2], 0.0, MAX_SPEED)
            if out._t and not (t > out._t[-1] and m >= out._m[-1]):
                raise SnapshotError(where, "expected times after the previous piece's")
            out._t.append(t)
            out._m.append(m)
            out._s.append(s)
        return out
