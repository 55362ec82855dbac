"""Reading and writing BVH motion-capture files.

Conventions, stated once (Blender's importer agrees on every file with three
rotation channels per joint; ``tests/test_blender.py`` checks it):

- Each joint keeps its own CHANNELS list; rotation channels are intrinsic Euler angles
  in degrees, applied in the order listed. A missing rotation axis is zero (Blender
  refuses joints with one or two rotation channels).
- A joint's local translation is its OFFSET, except that the joint's own position
  channels *replace* the matching OFFSET components (the MotionBuilder reading;
  Blender instead zeroes the components a joint has no channel for).
- ``world_pos(j) = world_pos(parent) + world_rot(parent) @ local_pos(j)``.
- A joint's name is the rest of its ROOT or JOINT line, inner spaces kept; names
  must be unique within a file, since tools address joints by name.
- A block's "{" stands alone on its line or ends the line that declares the block
  (``ROOT Hips {``, ``End Site {``, as some exporters write); a "{" that is not
  a separate word (``Hips{``) is part of the name.

Lengths and axes stay as the file has them; nothing here converts units or up axes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from motionode.rotations import (
    check_order,
    euler_to_matrix,
    matrix_to_euler,
    unwrap_euler,
)

logger = logging.getLogger(__name__)

# The compiled row parser, built at install time when a C compiler is there; without
# it motion rows go through numpy, several times slower.
try:
    from motionode import _bvhmotion
except ImportError as exc:
    _bvhmotion = None
    _bvhmotion_missing: str | None = str(exc)
else:
    _bvhmotion_missing = None

__all__ = ["BVHError", "Clip", "Skeleton", "parse_bvh", "read_bvh", "write_bvh"]

POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")
_VALID_CHANNELS = {c.lower(): c for c in POSITION_CHANNELS + ROTATION_CHANNELS}


class BVHError(ValueError):
    """A BVH file that cannot be read; the message reads ``path:line: problem``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path, self.line = path, line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


@dataclass
class Skeleton:
    """A joint hierarchy, in depth-first file order (parents before children).

    Attributes:
        names: joint names exactly as written (spaces, ':' and '.' kept).
        parents: (J,) int, index of each joint's parent, -1 for the root.
        offsets: (J, 3) float64 OFFSET of each joint in its parent's frame.
        channels: per joint, its channel names in file order (0 to 6 of them).
        end_parents: (E,) int, the joint each End Site hangs from.
        end_offsets: (E, 3) float64 End Site offsets.
    """

    names: list[str]
    parents: np.ndarray
    offsets: np.ndarray
    channels: list[tuple[str, ...]]
    end_parents: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    end_offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def num_channels(self) -> int:
        return sum(len(c) for c in self.channels)

    def channel_starts(self) -> np.ndarray:
        """(J,) int, column of each joint's first channel in a motion row."""
        counts = [len(c) for c in self.channels]
        return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)

    def rotation_order(self, joint: int) -> str:
        """Order of the joint's rotation axes, e.g. "ZXY"; absent axes appended."""
        axes = [c[0] for c in self.channels[joint] if c in ROTATION_CHANNELS]
        return "".join(axes + [a for a in "XYZ" if a not in axes])

    def index(self, name: str) -> int:
        """Index of the joint called ``name``; KeyError lists nearby names if absent."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"joint {name!r} not in skeleton {self.names}") from None

    def rig_difference(self, other: Skeleton) -> str | None:
        """Why ``other`` is not the same rig, or None if it is.

        Two skeletons are one rig when they have the same hierarchy and the same
        channels on every joint; joint names may differ (exporters name fingers
        or spine joints differently for one and the same rig), and are logged.
        """
        if self.num_joints != other.num_joints:
            return f"{other.num_joints} joints vs {self.num_joints}"
        if not np.array_equal(self.parents, other.parents):
            j = int(np.argmax(self.parents != other.parents))
            return f"joint {j} ({other.names[j]}) hangs from another parent"
        for j, (a, b) in enumerate(zip(self.channels, other.channels)):
            if a != b:
                return f"joint {j} ({other.names[j]}) has channels {b} vs {a}"
        renamed = [(a, b) for a, b in zip(self.names, other.names) if a != b]
        if renamed:
            logger.warning(
                "same rig with other joint names: %s",
                ", ".join(f"{b} as {a}" for a, b in renamed[:6]),
            )
        return None

    def with_rotation_order(self, order: str) -> Skeleton:
        """The same skeleton with every joint's rotation channels in ``order``."""
        order = check_order(order)
        channels = []
        for chans in self.channels:
            pos = [c for c in chans if c in POSITION_CHANNELS]
            rot = [f"{a}rotation" for a in order] if len(pos) < len(chans) else []
            channels.append(tuple(pos + rot))
        return Skeleton(
            list(self.names),
            self.parents.copy(),
            self.offsets.copy(),
            channels,
            self.end_parents.copy(),
            self.end_offsets.copy(),
        )

    def to_dict(self) -> dict:
        """Plain JSON-ready description of the skeleton."""
        return {
            "names": list(self.names),
            "parents": [int(p) for p in self.parents],
            "offsets": np.asarray(self.offsets, dtype=float).tolist(),
            "channels": [list(c) for c in self.channels],
            "end_parents": [int(p) for p in self.end_parents],
            "end_offsets": np.asarray(self.end_offsets, dtype=float).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Skeleton:
        """Inverse of :meth:`to_dict`; raises ValueError on a malformed description."""
        try:
            sk = cls(
                [str(n) for n in data["names"]],
                np.asarray(data["parents"], dtype=int),
                np.asarray(data["offsets"], dtype=np.float64).reshape(-1, 3),
                [tuple(str(c) for c in chans) for chans in data["channels"]],
                np.asarray(data.get("end_parents", []), dtype=int),
                np.asarray(data.get("end_offsets", []), dtype=np.float64).reshape(
                    -1, 3
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"skeleton description: missing or bad field {exc}"
            ) from exc
        sk.validate()
        return sk

    def validate(self) -> None:
        """Raise ValueError if the arrays disagree or parents are not topological."""
        n = len(self.names)
        if self.parents.shape != (n,) or self.offsets.shape != (n, 3):
            raise ValueError("skeleton: names, parents and offsets differ in length")
        if len(self.channels) != n:
            raise ValueError("skeleton: one channel list per joint expected")
        for j, p in enumerate(self.parents):
            if not (p == -1 if j == 0 else 0 <= p < j):
                raise ValueError(f"skeleton: joint {j} has bad parent {p}")
        for chans in self.channels:
            for c in chans:
                if c not in _VALID_CHANNELS.values():
                    raise ValueError(f"skeleton: unknown channel {c!r}")
        if len(self.end_parents) != len(self.end_offsets):
            raise ValueError("skeleton: end_parents and end_offsets differ in length")

    def height(self, local_pos: np.ndarray | None = None) -> float:
        """Rest-pose extent along the largest axis (file units), for tolerances."""
        from motionode.kinematics import forward_kinematics

        rot = np.broadcast_to(np.eye(3), (self.num_joints, 3, 3))
        pos = self.offsets if local_pos is None else local_pos
        world_pos, world_rot = forward_kinematics(self.parents, rot, pos)
        ends = world_pos[self.end_parents] + np.einsum(
            "eij,ej->ei", world_rot[self.end_parents], self.end_offsets
        )
        pts = np.concatenate([world_pos, ends])
        return float(np.max(np.ptp(pts, axis=0)))


@dataclass
class Clip:
    """A skeleton plus its motion.

    Attributes:
        skeleton: the joint hierarchy.
        motion: (F, C) float64 channel values, one row per frame, in file order;
            angles in degrees.
        frame_time: seconds between frames, as written in the file.
        source: where the clip came from (a path, or a short description).
    """

    skeleton: Skeleton
    motion: np.ndarray
    frame_time: float
    source: str = "<memory>"

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    @property
    def fps(self) -> float:
        """Frame rate, snapped to a whole number when the file's rounding hides it.

        Files write 1/120 as 0.008333 (120.005 fps) or 1/60 as 0.0166667; within a
        relative 2e-4 of a whole number, the whole number is meant.
        """
        raw = 1.0 / self.frame_time
        nearest = round(raw)
        if nearest > 0 and abs(raw - nearest) <= 2e-4 * raw:
            return float(nearest)
        return raw

    @property
    def times(self) -> np.ndarray:
        """(F,) float64 timestamps in seconds: frame index times the frame period."""
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    def local_transforms(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame local rotations (F, J, 3, 3) and translations (F, J, 3)."""
        return channels_to_local(self.skeleton, self.motion)

    def world_positions(self, include_end_sites: bool = False) -> np.ndarray:
        """(F, J, 3) float64 world joint positions, plus (F, E, 3) end sites if
        asked."""
        from motionode.kinematics import forward_kinematics

        local_rot, local_pos = self.local_transforms()
        world_pos, world_rot = forward_kinematics(
            self.skeleton.parents, local_rot, local_pos
        )
        if not include_end_sites:
            return world_pos
        sk = self.skeleton
        ends = world_pos[:, sk.end_parents] + np.einsum(
            "fejk,ek->fej", world_rot[:, sk.end_parents], sk.end_offsets
        )
        return np.concatenate([world_pos, ends], axis=1)


def channels_to_local(
    skeleton: Skeleton, motion: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Channel rows (F, C) to local rotations (F, J, 3, 3) and translations
    (F, J, 3)."""
    motion = np.asarray(motion, dtype=np.float64)
    num_frames, num_joints = motion.shape[0], skeleton.num_joints
    local_pos = np.broadcast_to(skeleton.offsets, (num_frames, num_joints, 3)).copy()
    local_rot = np.empty((num_frames, num_joints, 3, 3))
    starts = skeleton.channel_starts()
    for j, chans in enumerate(skeleton.channels):
        angles = np.zeros((num_frames, 3))
        for k, name in enumerate(chans):
            col = motion[:, starts[j] + k]
            axis = "XYZ".index(name[0])
            if name in POSITION_CHANNELS:
                local_pos[:, j, axis] = col
        order = skeleton.rotation_order(j)
        for k, name in enumerate(chans):
            if name in ROTATION_CHANNELS:
                angles[:, order.index(name[0])] = motion[:, starts[j] + k]
        local_rot[:, j] = euler_to_matrix(np.radians(angles), order)
    return local_rot, local_pos


def local_to_channels(
    skeleton: Skeleton,
    local_rot: np.ndarray,
    local_pos: np.ndarray,
    previous: np.ndarray | None = None,
    continuous: bool = True,
) -> np.ndarray:
    """Local rotations (F, J, 3, 3) and translations (F, J, 3) to channel rows (F, C).

    With ``continuous``, Euler angles are kept continuous over frames (no 360-degree
    jumps), continuing from the channel row ``previous`` (C,) when one is given;
    without it every row holds the principal angles of its own rotations. Joints with
    fewer than three rotation channels keep only their listed axes; the caller must
    not ask them for rotations about the missing axes.
    """
    num_frames = local_rot.shape[0]
    motion = np.zeros((num_frames, skeleton.num_channels))
    starts = skeleton.channel_starts()
    orders = [skeleton.rotation_order(j) for j in range(skeleton.num_joints)]
    rotating = [
        j
        for j, chans in enumerate(skeleton.channels)
        if any(c in ROTATION_CHANNELS for c in chans)
    ]
    angles = {}
    for order in sorted({orders[j] for j in rotating}):
        group = [j for j in rotating if orders[j] == order]
        euler = matrix_to_euler(local_rot[:, group], order)  # (F, G, 3) radians
        for g, j in enumerate(group):
            angles[j] = euler[:, g]
    for j in rotating:
        if previous is not None:
            ref = _previous_angles(skeleton, previous, j, orders[j])
            angles[j] = unwrap_euler(np.concatenate([ref[None], angles[j]]), orders[j])[
                1:
            ]
        elif continuous:
            angles[j] = unwrap_euler(angles[j], orders[j])
    for j, chans in enumerate(skeleton.channels):
        for k, name in enumerate(chans):
            axis = "XYZ".index(name[0])
            if name in POSITION_CHANNELS:
                motion[:, starts[j] + k] = local_pos[:, j, axis]
            else:
                motion[:, starts[j] + k] = np.degrees(
                    angles[j][:, orders[j].index(name[0])]
                )
    return motion


def _previous_angles(
    skeleton: Skeleton, row: np.ndarray, joint: int, order: str
) -> np.ndarray:
    """Euler triple (3,) radians of ``joint`` in the channel row ``row``, in ``order``;
    axes the joint lacks read as zero."""
    out = np.zeros(3)
    start = skeleton.channel_starts()[joint]
    for k, name in enumerate(skeleton.channels[joint]):
        if name in ROTATION_CHANNELS:
            out[order.index(name[0])] = np.radians(row[start + k])
    return out


# ---------------------------------------------------------------------------- reading


def read_bvh(path: str | os.PathLike) -> Clip:
    """Read a BVH file.

    Raises:
        BVHError: the file is not valid BVH; the message names the file and line.
        OSError: the file cannot be opened.
    """
    path = str(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BVHError(
            path, line, "expected UTF-8 text, got undecodable bytes"
        ) from None
    return parse_bvh(text, path)


_TOKEN = re.compile(r"\S+")
_HEAD_CHUNK = 1 << 16  # characters split into lines at first to find the header


def parse_bvh(text: str, path: str = "<string>") -> Clip:
    """Parse BVH ``text``; ``path`` is used in error messages only."""
    if "\x00" in text:
        raise BVHError(
            path,
            text.count("\n", 0, text.index("\x00")) + 1,
            "expected text, got binary data (NUL byte)",
        )
    skeleton, header, start = _parse_head(text, path)
    motion = _parse_motion(text, start, header, skeleton, path)
    return Clip(skeleton, motion, header.frame_time, path)


class _MotionHeader(NamedTuple):
    """The Frames: and Frame Time: lines after MOTION."""

    frames: int  # the count Frames: declares
    frames_line: int  # line number of Frames:, for the warning when rows disagree
    frame_time: float
    first: int  # index of the line after Frame Time:, where rows may begin


def _parse_head(text: str, path: str) -> tuple[Skeleton, _MotionHeader, int]:
    """Parse up to the Frame Time line; also returns where the motion rows start.

    Only a prefix is split into lines, since the rows are parsed straight from the
    text. A prefix that parses cleanly would parse the same way in the whole text,
    so on any error a longer prefix is tried, up to the whole text.
    """
    size = _HEAD_CHUNK
    while True:
        whole = size >= len(text)
        chunk = text if whole else text[:size]
        lines = chunk.splitlines()
        if not whole:
            lines.pop()  # the cut may fall inside the last line
        try:
            skeleton, motion_idx = _parse_hierarchy(lines, path)
            header = _motion_header(lines, motion_idx, path)
        except BVHError:
            if whole:
                raise
            size *= 4
            continue
        start = sum(map(len, chunk.splitlines(keepends=True)[: header.first]))
        return skeleton, header, start


def _parse_hierarchy(lines: list[str], path: str) -> tuple[Skeleton, int]:
    """Parse from HIERARCHY to MOTION; returns the skeleton and MOTION's line index."""
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[tuple[str, ...]] = []
    end_parents: list[int] = []
    end_offsets: list[list[float]] = []
    # Stack of open blocks: joint index, or -2 for an End Site, with its line.
    stack: list[tuple[int, int]] = []
    # A block declared whose "{" is not yet seen: index, line, and how it reads.
    pending: tuple[int, int, str] | None = None
    seen_header = seen_root = False
    name_lines: dict[str, int] = {}  # line each joint name was first given on

    n = 0
    for n, raw in enumerate(lines):
        toks = raw.split()
        if not toks:
            continue
        line = n + 1
        key = toks[0].upper()
        if not seen_header:
            if key != "HIERARCHY":
                raise BVHError(
                    path, line, f"expected 'HIERARCHY', got {raw.strip()[:40]!r}"
                )
            seen_header = True
            continue
        if pending is not None and key != "{":
            _, declared, what = pending
            raise BVHError(
                path,
                line,
                f"expected '{{' opening the block of {what} (line {declared}), "
                f"got {raw.strip()[:40]!r}",
            )
        if key in ("ROOT", "JOINT"):
            if key == "ROOT" and (seen_root or stack):
                raise BVHError(path, line, "expected one ROOT, got a second")
            if key == "JOINT" and (not stack or stack[-1][0] < 0):
                raise BVHError(path, line, "expected JOINT inside a joint block")
            seen_root = True
            # Names keep inner spaces exactly: take the text after the keyword, less
            # a "{" ending the line, which opens the block as some exporters write.
            name = raw.strip()[len(toks[0]) :].strip()
            opens = len(toks) > 1 and toks[-1] == "{"
            if opens:
                name = name[:-1].rstrip()
            if not name:
                got = "'{'" if opens else "end of line"
                raise BVHError(
                    path, line, f"expected a joint name after {toks[0]}, got {got}"
                )
            if name in name_lines:
                # Tools that address joints by name could not tell the two apart.
                raise BVHError(
                    path,
                    line,
                    f"expected unique joint names, got {name[:40]!r} again "
                    f"(first at line {name_lines[name]})",
                )
            name_lines[name] = line
            names.append(name)
            parents.append(stack[-1][0] if stack else -1)
            offsets.append([0.0, 0.0, 0.0])
            channels.append(())
            if opens:
                stack.append((len(names) - 1, line))
            else:
                pending = (len(names) - 1, line, f"{toks[0]} {name[:40]!r}")
        elif key == "END":
            rest = [t.upper() for t in toks[1:]]
            if rest not in (["SITE"], ["SITE", "{"]):
                raise BVHError(
                    path,
                    line,
                    f"expected 'End Site' or 'End Site {{', got {raw.strip()[:40]!r}",
                )
            if not stack or stack[-1][0] < 0:
                raise BVHError(path, line, "expected End Site inside a joint block")
            end_parents.append(stack[-1][0])
            end_offsets.append([0.0, 0.0, 0.0])
            if len(rest) == 2:
                stack.append((-2, line))
            else:
                pending = (-2, line, "End Site")
        elif key == "{":
            if pending is None:
                raise BVHError(
                    path, line, "expected ROOT, JOINT or End Site before '{'"
                )
            if len(toks) > 1:
                # Whatever follows would be dropped unread.
                raise BVHError(
                    path,
                    line,
                    f"expected '{{' alone on its line, got {raw.strip()[:40]!r}",
                )
            stack.append((pending[0], line))
            pending = None
        elif key == "}":
            if not stack:
                raise BVHError(path, line, "unbalanced '}': no open block")
            if len(toks) > 1:
                raise BVHError(
                    path,
                    line,
                    f"expected '}}' alone on its line, got {raw.strip()[:40]!r}",
                )
            stack.pop()
        elif key == "OFFSET":
            if not stack:
                raise BVHError(path, line, "expected OFFSET inside a block")
            vals = _floats(toks[1:], 3, path, line, "OFFSET")
            if stack[-1][0] == -2:
                end_offsets[-1] = vals
            else:
                offsets[stack[-1][0]] = vals
        elif key == "CHANNELS":
            if not stack or stack[-1][0] < 0:
                raise BVHError(path, line, "expected CHANNELS inside a joint block")
            channels[stack[-1][0]] = _channels(toks, path, line)
        elif key == "MOTION":
            if stack:
                raise BVHError(
                    path,
                    line,
                    f"expected '}}' closing the block opened at "
                    f"line {stack[-1][1]}, got 'MOTION'",
                )
            if not names:
                raise BVHError(path, line, "expected a ROOT joint before MOTION")
            sk = Skeleton(
                names,
                np.asarray(parents, dtype=int),
                np.asarray(offsets, dtype=np.float64),
                channels,
                np.asarray(end_parents, dtype=int),
                np.asarray(end_offsets, dtype=np.float64).reshape(-1, 3),
            )
            return sk, n
        else:
            raise BVHError(
                path, line, f"expected a hierarchy keyword, got {toks[0][:40]!r}"
            )
    if not seen_header:
        raise BVHError(
            path, n + 1 if lines else 1, "expected 'HIERARCHY', got end of file"
        )
    raise BVHError(path, len(lines), "expected 'MOTION', got end of file")


def _floats(
    toks: list[str], count: int, path: str, line: int, what: str
) -> list[float]:
    if len(toks) != count:
        raise BVHError(
            path, line, f"expected {count} numbers after {what}, got {len(toks)}"
        )
    try:
        vals = [float(t) for t in toks]
    except ValueError:
        bad = next(t for t in toks if not _is_float(t))
        raise BVHError(
            path, line, f"expected a number in {what}, got {bad[:40]!r}"
        ) from None
    if not all(math.isfinite(v) for v in vals):
        raise BVHError(path, line, f"expected finite numbers in {what}, got {toks}")
    return vals


def _is_float(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _channels(toks: list[str], path: str, line: int) -> tuple[str, ...]:
    if len(toks) < 2 or not _is_count(toks[1]):
        got = toks[1] if len(toks) > 1 else "end of line"
        raise BVHError(
            path, line, f"expected a channel count after CHANNELS, got {got!r}"
        )
    count = int(toks[1])
    names = toks[2:]
    if count > 6 or len(names) != count:
        raise BVHError(
            path, line, f"expected {count} channel names (at most 6), got {len(names)}"
        )
    out = []
    for tok in names:
        canon = _VALID_CHANNELS.get(tok.lower())
        if canon is None:
            raise BVHError(
                path,
                line,
                f"expected a channel name like Xrotation or "
                f"Yposition, got {tok[:40]!r}",
            )
        if canon in out:
            raise BVHError(path, line, f"expected each channel once, got {tok!r} twice")
        out.append(canon)
    return tuple(out)


def _header_value(lines: list[str], idx: int, label: str, path: str) -> tuple[str, int]:
    """Find the next non-blank line at or after ``idx``; it must start with
    ``label``."""
    while idx < len(lines) and not lines[idx].strip():
        idx += 1
    if idx >= len(lines):
        raise BVHError(path, len(lines), f"expected '{label}', got end of file")
    stripped = lines[idx].strip()
    words = len(label.split())
    parts = stripped.split(None, words)
    if " ".join(parts[:words]).lower() != label.lower():
        raise BVHError(path, idx + 1, f"expected '{label}', got {stripped[:40]!r}")
    return (parts[words].strip() if len(parts) > words else ""), idx


MAX_COUNT_DIGITS = 12  # a count with more digits is not a real frame or channel count
MAX_EMPTY_FRAMES = 10_000_000  # frames taken on trust from a file without channels
MIN_FRAME_TIME = 1e-6  # seconds: a million frames a second; below it, not a rate


def _is_count(tok: str) -> bool:
    return tok.isascii() and tok.isdigit() and len(tok) <= MAX_COUNT_DIGITS


def _motion_header(lines: list[str], motion_idx: int, path: str) -> _MotionHeader:
    """Parse the Frames: and Frame Time: lines after MOTION."""
    value, idx = _header_value(lines, motion_idx + 1, "Frames:", path)
    if not _is_count(value):
        raise BVHError(
            path, idx + 1, f"expected a whole frame count, got {value[:40]!r}"
        )
    frames_line = idx + 1
    declared = int(value)
    value, idx = _header_value(lines, idx + 1, "Frame Time:", path)
    try:
        frame_time = float(value)
    except ValueError:
        raise BVHError(
            path, idx + 1, f"expected a frame time in seconds, got {value[:40]!r}"
        ) from None
    if not (math.isfinite(frame_time) and frame_time >= MIN_FRAME_TIME):
        raise BVHError(
            path,
            idx + 1,
            f"expected a frame time of at least {MIN_FRAME_TIME:g} s, got {value!r}",
        )
    return _MotionHeader(declared, frames_line, frame_time, idx + 1)


def _parse_motion(
    text: str, start: int, header: _MotionHeader, skeleton: Skeleton, path: str
) -> np.ndarray:
    """(F, C) float64 rows of ``text[start:]``, whose first line has index
    ``header.first``."""
    declared, frames_line, first = header.frames, header.frames_line, header.first
    num_channels = skeleton.num_channels
    motion = None
    if _bvhmotion is not None:
        motion = _compiled_rows(text, start, first, num_channels, path)
    elif _bvhmotion_missing is not None:
        _log_missing_parser()
    if motion is None:
        motion = _python_rows(text[start:], first, num_channels, path)

    if num_channels == 0 and declared:
        # Rows of no values cannot be counted; the declared count is all there is.
        if declared > MAX_EMPTY_FRAMES:
            raise BVHError(
                path,
                frames_line,
                f"expected at most {MAX_EMPTY_FRAMES} frames in a file without "
                f"channels, got {declared}",
            )
        motion = np.zeros((declared, 0))
    if len(motion) != declared:
        warnings.warn(
            f"{path}:{frames_line}: Frames: says {declared}, found "
            f"{len(motion)} complete rows; keeping {len(motion)}",
            stacklevel=3,
        )
    bad = ~np.isfinite(motion)
    if bad.any():
        f, c = np.argwhere(bad)[0]
        raise BVHError(
            path,
            _row_lines(text[start:], first)[f],
            f"expected finite values, got "
            f"{motion[f, c]} in frame {f} channel {c} "
            f"({_channel_label(skeleton, c)})",
        )
    return motion


def _compiled_rows(
    text: str, start: int, first: int, width: int, path: str
) -> np.ndarray | None:
    """(F, C) rows from the compiled parser, or None where it leaves the text to
    :func:`_python_rows` (anything beyond plain numbers, blanks and line ends)."""
    if not text.isascii():
        # It reads one byte per character; the rows themselves are nearly always
        # ASCII even when a joint name is not.
        text, start = text[start:], 0
    values, rows, line, count = _bvhmotion.parse_rows(text, start, width)
    if values is not None:
        return np.frombuffer(values, dtype=np.float64).reshape(rows, width)  # (F, C)
    if line >= 0:
        raise _row_width_error(path, first + line + 1, width, count)
    return None


def _log_missing_parser() -> None:
    """Say once per process why reading is slower than it could be."""
    global _bvhmotion_missing
    logger.warning(
        "compiled BVH parser unavailable (%s); reading motion with numpy, "
        "several times slower (reinstall motionode with a C compiler to build it)",
        _bvhmotion_missing,
    )
    _bvhmotion_missing = None


def _python_rows(tail: str, first: int, width: int, path: str) -> np.ndarray:
    """(F, C) rows of ``tail``, whose first line has index ``first``, read with
    numpy and, to find a bad line, with float(); the reference for the compiled
    parser."""
    lines = tail.splitlines()
    data_lines = [i for i, s in enumerate(lines) if s.strip()]
    block = "\n".join([lines[i] for i in data_lines])
    values = _fast_floats(block)
    if (
        values is None
        or len(values) != len(data_lines) * width
        or any(len(lines[i].split()) != width for i in data_lines)
    ):
        values = _slow_rows(lines, data_lines, first, width, path)
    return values.reshape(len(data_lines), width)  # (F, C)


def _row_lines(tail: str, first: int) -> list[int]:
    """File line number of each motion row in ``tail``."""
    return [first + i + 1 for i, s in enumerate(tail.splitlines()) if s.strip()]


def _fast_floats(block: str) -> np.ndarray | None:
    """All numbers in ``block`` via numpy's C parser, or None if any token is
    not one."""
    if not block:
        return np.zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return np.fromstring(block, dtype=np.float64, sep=" ")
        except (DeprecationWarning, ValueError):
            return None


def _slow_rows(
    lines: list[str], data_lines: list[int], first: int, width: int, path: str
) -> np.ndarray:
    """Parse row by row to find and name the first bad line."""
    rows = []
    for i in data_lines:
        toks = lines[i].split()
        if len(toks) != width:
            raise _row_width_error(path, first + i + 1, width, len(toks))
        try:
            rows.append([float(t) for t in toks])
        except ValueError:
            bad = next(t for t in toks if not _is_float(t))
            raise BVHError(
                path, first + i + 1, f"expected a number, got {bad[:40]!r}"
            ) from None
    return np.asarray(rows, dtype=np.float64).reshape(-1)


def _row_width_error(path: str, line: int, width: int, count: int) -> BVHError:
    what = "row cut short" if count < width else "too many values"
    return BVHError(
        path, line, f"expected {width} values per motion row, got {count} ({what})"
    )


def _channel_label(skeleton: Skeleton, column: int) -> str:
    starts = skeleton.channel_starts()
    j = int(np.searchsorted(starts, column, side="right") - 1)
    while j > 0 and not skeleton.channels[j]:
        j -= 1
    return f"{skeleton.names[j]} {skeleton.channels[j][column - starts[j]]}"


# ---------------------------------------------------------------------------- writing


def format_bvh(clip: Clip) -> str:
    """The clip as BVH text (LF line endings, shortest round-tripping floats).

    Raises:
        ValueError: motion of the wrong shape, a non-finite number, or a joint name
            that would not read back as written: empty, holding a line break or a
            NUL, starting or ending with whitespace, ending in a separate "{", or
            repeated (inner spaces are fine).
    """
    sk = clip.skeleton
    motion = np.asarray(clip.motion, dtype=np.float64)
    if motion.shape[1:] != (sk.num_channels,):
        raise ValueError(
            f"motion: expected (F, {sk.num_channels}) values, got {motion.shape}"
        )
    if not np.isfinite(motion).all():
        f, c = np.argwhere(~np.isfinite(motion))[0]
        raise ValueError(
            f"motion: non-finite value {motion[f, c]} in frame {f} "
            f"channel {c}; refusing to write it"
        )
    if not (math.isfinite(clip.frame_time) and clip.frame_time > 0):
        raise ValueError(
            f"frame_time: expected a positive number, got {clip.frame_time}"
        )
    for what, table in (("offsets", sk.offsets), ("end_offsets", sk.end_offsets)):
        if not np.isfinite(table).all():
            row = int(np.argwhere(~np.isfinite(table))[0, 0])
            raise ValueError(
                f"skeleton.{what}: non-finite value in row {row} "
                f"{np.asarray(table)[row].tolist()}; refusing to write it"
            )
    first: dict[str, int] = {}
    for j, name in enumerate(sk.names):
        problem = _name_problem(name)
        if problem is None and name in first:
            problem = f"is also the name of joint {first[name]}"
        if problem is not None:
            raise ValueError(
                f"skeleton.names[{j}]: joint name {name!r} {problem}; "
                "it would not read back from BVH"
            )
        first[name] = j

    out = ["HIERARCHY"]
    children: dict[int, list[int]] = {}
    for j, p in enumerate(sk.parents):
        children.setdefault(int(p), []).append(j)
    ends: dict[int, list[int]] = {}
    for e, p in enumerate(sk.end_parents):
        ends.setdefault(int(p), []).append(e)

    # Depth first with an explicit stack (a chain of thousands of joints reads,
    # so it must write too): ("open", joint, depth) writes a joint's header and
    # queues its children, its end sites and its closing brace.
    stack: list[tuple[str, int, int]] = [("open", 0, 0)]
    while stack:
        what, j, depth = stack.pop()
        pad = "  " * depth
        if what == "close":
            out.append(pad + "}")
            continue
        if what == "end":
            out.extend(
                [
                    f"{pad}  End Site",
                    f"{pad}  {{",
                    f"{pad}    OFFSET {_fmt_row(sk.end_offsets[j])}",
                    f"{pad}  }}",
                ]
            )
            continue
        out.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {sk.names[j]}")
        out.append(pad + "{")
        out.append(f"{pad}  OFFSET {_fmt_row(sk.offsets[j])}")
        out.append(
            f"{pad}  CHANNELS {len(sk.channels[j])} {' '.join(sk.channels[j])}".rstrip()
        )
        later = [("open", c, depth + 1) for c in children.get(j, [])]
        later += [("end", e, depth) for e in ends.get(j, [])]
        stack.append(("close", j, depth))
        stack.extend(reversed(later))

    out += ["MOTION", f"Frames: {len(motion)}", f"Frame Time: {clip.frame_time!r}"]
    out += [_fmt_row(row) for row in motion]
    return "\n".join(out) + "\n"


def _name_problem(name: str) -> str | None:
    """Why ``name`` would not read back unchanged from a ROOT or JOINT line (the
    reader takes the rest of the line, stripped), or None if it would."""
    if not name:
        return "is empty"
    if name.splitlines() != [name]:
        return "contains a line break"
    if "\x00" in name:
        return "contains a NUL character"
    if name != name.strip():
        return "starts or ends with whitespace"
    if name.split()[-1] == "{":
        return "ends in a separate '{', which would open its block"
    return None


def _fmt_row(values: np.ndarray) -> str:
    # repr gives the shortest text that reads back to the same float64.
    return " ".join(repr(v) for v in np.asarray(values, dtype=np.float64).tolist())


def write_bvh(
    path: str | os.PathLike, clip: Clip, rotation_order: str | None = None
) -> None:
    """Write ``clip`` to ``path`` atomically (temporary file, then rename).

    Args:
        rotation_order: if given, re-express every joint's rotation channels in this
            order (e.g. "XYZ"); joint positions are unchanged.

    Raises:
        ValueError: the clip cannot be written as readable BVH (see
            :func:`format_bvh`); nothing is written then.
    """
    if rotation_order is not None:
        clip = reorder_rotations(clip, rotation_order)
    text = format_bvh(clip)
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a clip is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("wrote %s (%d frames)", path, clip.num_frames)


def reorder_rotations(clip: Clip, order: str) -> Clip:
    """The same motion with every joint's rotations written in ``order``."""
    local_rot, local_pos = clip.local_transforms()
    skeleton = clip.skeleton.with_rotation_order(order)
    motion = local_to_channels(skeleton, local_rot, local_pos)
    return Clip(skeleton, motion, clip.frame_time, clip.source)
