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

logger = logging.getLogger(__name__)

__all__ = ["Timeline"]


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
