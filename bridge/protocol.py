"""Bridge wire protocol, version 1: constants and the codecs for both sockets.

``PROTOCOL.md`` beside this module is the normative text; this module is its Python
reading. Control messages are UTF-8 JSON objects. Stream messages are single ZeroMQ
frames: a 9-byte ASCII topic, a 40-byte little-endian header, then the payload.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "ERROR_CODES",
    "FLAG_VELOCITIES",
    "HEADER",
    "KIND_END",
    "KIND_FRAME",
    "KIND_SKELETON",
    "MAGIC",
    "MAX_SNAPSHOT_BYTES",
    "OPS",
    "VERSION",
    "ProtocolError",
    "Request",
    "StreamMessage",
    "decode_reply",
    "decode_request",
    "decode_stream_message",
    "describe_skeleton",
    "encode_end",
    "encode_error",
    "encode_frame",
    "encode_reply",
    "encode_request",
    "encode_skeleton",
    "short_repr",
    "topic",
]

VERSION = 1
MAGIC = b"MOTN"
KIND_SKELETON, KIND_FRAME, KIND_END = 0, 1, 2
KINDS = {KIND_SKELETON: "skeleton", KIND_FRAME: "frame", KIND_END: "end"}
# magic, version, kind, flags, stream id, seq, stream time, send time, count
HEADER = struct.Struct("<4sBBHIQddI")
TOPIC_SIZE = 9  # eight lowercase hex digits of the stream id, then "|"
# Frame flags (the header's layout field): bit 0 says the C channel values are
# followed by their C time derivatives.
FLAG_VELOCITIES = 0x0001

MAX_REQUEST_BYTES = 65536  # larger control messages are cut off by ZeroMQ itself
MAX_FPS = 1000.0
# Frames at most 1 s apart: a frame far ahead in motion time means solving the
# motion up to it on the thread every push stream shares, stalling the others.
MIN_FPS = 1.0
MAX_FRAME_MOTION = 1.0  # seconds of motion between a push stream's frames (speed/fps)
MAX_PULL_TIMES = 256  # poses per pull request; about 0.5 s of model time on a CPU
MAX_START = 60.0  # seconds: a stream's start time, solved from 0 before frame 0
MAX_PULL_AHEAD = 30.0  # seconds a pull may reach past the stream's latest time
MAX_ID_CHARS = 64
MAX_SOURCE_CHARS = 256
MAX_SEED = 2**63 - 1
MAX_STREAM_ID = 2**32 - 1
MAX_BLEND = 8  # sources in one blend
WEIGHT_TOLERANCE = 1e-6  # how far a blend's weights may sum from 1
MAX_SPEED = 4.0  # motion seconds per stream second
# Frames a recording may have in flight unacknowledged: well under ZeroMQ's default
# queue of 1000 messages at either end, so none is ever dropped.
MAX_WINDOW = 512
DEFAULT_WINDOW = 256
# A stream snapshot (the ``snapshot`` op's reply, ``open``'s ``snapshot`` field)
# is at most this many bytes of JSON, so an ``open`` carrying one stays within
# MAX_REQUEST_BYTES with room for its other fields.
MAX_SNAPSHOT_BYTES = 61440
STREAM_SNAPSHOT_FORMAT = "motionode-stream/1"
MAX_SEQ = 2**53  # frame numbers a client may name

OPS = (
    "hello",
    "skeleton",
    "sources",
    "ping",
    "open",
    "pull",
    "close",
    "streams",
    "switch",
    "speed",
    "ack",
    "snapshot",
)
ERROR_CODES = {
    "bad_json": "the request is not a UTF-8 JSON object",
    "bad_frames": "the request has the wrong number of ZeroMQ frames",
    "bad_version": "the request's protocol version is not supported",
    "bad_request": "a field is missing, unknown, of the wrong type or out of range",
    "unknown_op": "no such operation",
    "unknown_source": "the model has no such source",
    "unknown_stream": "no open stream has that id",
    "wrong_mode": "the operation does not apply to the stream's mode",
    "too_many_streams": "the server's or this client's stream limit is reached",
    "bad_snapshot": "the snapshot is damaged, or fits another model or seed clip",
    "internal": "the server failed while answering; the request may be retried",
}


class ProtocolError(Exception):
    """A message that breaks the protocol, or an error reply from the server.

    Attributes:
        code: one of ``ERROR_CODES`` (or ``bad_reply``, raised by clients only).
        message: what was wrong, naming the field and the bad value.
        request_id: the id of the offending request, when it could be read.
    """

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 40 characters for log lines and error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------- control messages


def _bad(field: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(
        "bad_request", f"{field}: expected {expected}, got {short_repr(value)}"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(field: str, value: Any, expected: str) -> float:
    if not _is_number(value):
        raise _bad(field, expected, value)
    try:
        number = float(value)
    except OverflowError:
        raise _bad(field, expected, value) from None
    if not math.isfinite(number):
        raise _bad(field, expected, value)
    return number


def _source_name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SOURCE_CHARS:
        raise _bad(field, "a source name such as 'prior'", value)
    return value


def _source(value: Any) -> str | dict:
    """A source name, or a blend: ``{"blend": [{"source", "weight", "seed"?}]}``."""
    # e.g. {"blend": [{"source": "clip:walk", "weight": 0.5},
    #                 {"source": "prior", "seed": 3, "weight": 0.5}]}
    if not isinstance(value, dict):
        return _source_name("source", value)
    parts = value.get("blend")
    if set(value) != {"blend"} or not isinstance(parts, list):
        raise _bad("source", "a source name or {'blend': [...]}", value)
    if not 2 <= len(parts) <= MAX_BLEND:
        raise _bad("source.blend", f"a list of 2 to {MAX_BLEND} sources", parts)
    blend = []
    for i, part in enumerate(parts):
        field = f"source.blend[{i}]"
        if not isinstance(part, dict) or not {"source", "weight"} <= set(part):
            raise _bad(field, "an object with 'source' and 'weight'", part)
        unknown = sorted(set(part) - {"source", "weight", "seed"})
        if unknown:
            raise _bad(field, "only 'source', 'weight' and 'seed'", unknown)
        weight = _finite(f"{field}.weight", part["weight"], "a number in (0, 1]")
        if not 0 < weight <= 1:
            raise _bad(f"{field}.weight", "a number in (0, 1]", part["weight"])
        blend.append(
            {
                "source": _source_name(f"{field}.source", part["source"]),
                "weight": weight,
                "seed": _seed(part["seed"], f"{field}.seed")
                if "seed" in part
                else None,
            }
        )
    total = math.fsum(part["weight"] for part in blend)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ProtocolError(
            "bad_request",
            f"source.blend: weights sum to {total:.9g}; expected 1 "
            f"(within {WEIGHT_TOLERANCE:g})",
        )
    return {"blend": blend}


def _seed(value: Any, field: str = "seed") -> int:
    if not (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_SEED
    ):
        raise _bad(field, f"an integer in [0, {MAX_SEED}]", value)
    return value


def _fps(value: Any) -> float:
    expected = f"a number from {MIN_FPS:g} to {MAX_FPS:g}"
    fps = _finite("fps", value, expected)
    if not MIN_FPS <= fps <= MAX_FPS:
        raise _bad("fps", expected, value)
    return fps


def _start(value: Any) -> float:
    expected = f"a time from 0 to {MAX_START:g} seconds"
    start = _finite("start", value, expected)
    if not 0 <= start <= MAX_START:
        raise _bad("start", expected, value)
    return start


CONVENTIONS = ("blender", "godot", "raw", "unity", "unreal")


def _convention(value: Any) -> str:
    if value not in CONVENTIONS:
        raise _bad("convention", f"one of {', '.join(CONVENTIONS)}", value)
    return value


ROTATIONS = ("euler", "quaternion")


def _rotations(value: Any) -> str:
    if value not in ROTATIONS:
        raise _bad("rotations", "'euler' or 'quaternion'", value)
    return value


def _mode(value: Any) -> str:
    if value not in ("push", "pull", "record"):
        raise _bad("mode", "'push', 'pull' or 'record'", value)
    return value


def _window(value: Any) -> int:
    if not (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 1 <= value <= MAX_WINDOW
    ):
        raise _bad("window", f"an integer from 1 to {MAX_WINDOW}", value)
    return value


def _received(value: Any) -> int:
    if not (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_SEED
    ):
        raise _bad("received", "a count of frames, an integer >= 0", value)
    return value


def _flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _bad(name, "true or false", value)
        return value

    return check


def _speed(value: Any) -> float:
    expected = f"a number from 0 to {MAX_SPEED:g}"
    speed = _finite("speed", value, expected)
    if not 0 <= speed <= MAX_SPEED:
        raise _bad("speed", expected, value)
    return speed


def _stream_id(value: Any) -> int:
    if not (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 < value <= MAX_STREAM_ID
    ):
        raise _bad("stream", f"a stream id in [1, {MAX_STREAM_ID}]", value)
    return value


def _times(value: Any) -> list[float]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_PULL_TIMES:
        raise _bad("times", f"a list of 1 to {MAX_PULL_TIMES} times", value)
    times = []
    for i, t in enumerate(value):
        t = _finite(f"times[{i}]", t, "a time >= 0 in seconds")
        if t < 0:
            raise _bad(f"times[{i}]", "a time >= 0 in seconds", value[i])
        times.append(t)
    return times


def _seq(name: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value <= MAX_SEQ
        ):
            raise _bad(name, f"a frame number, an integer from 0 to {MAX_SEQ}", value)
        return value

    return check


def _hex_float(field: str, value: Any, low: float, high: float) -> float:
    expected = f"a hexadecimal float string from {low:g} to {high:g}"
    if not isinstance(value, str) or len(value) > 32:
        raise _bad(field, expected, value)
    try:
        number = float.fromhex(value)
    except (ValueError, OverflowError):
        raise _bad(field, expected, value) from None
    if not (math.isfinite(number) and low <= number <= high):
        raise _bad(field, expected, value)
    return number


_STREAM_SNAPSHOT_FIELDS = ("format", "fps", "start", "seq", "timeline", "poses")


def _stream_snapshot(value: Any) -> dict:
    """A stream snapshot as the ``snapshot`` op gives it; its ``timeline`` and
    ``poses`` are checked in depth when a stream is opened from it."""
    if not isinstance(value, dict):
        raise _bad("snapshot", "an object from a 'snapshot' reply", value)
    missing = [k for k in _STREAM_SNAPSHOT_FIELDS if k not in value]
    unknown = sorted(set(value) - set(_STREAM_SNAPSHOT_FIELDS))
    if missing or unknown:
        raise ProtocolError(
            "bad_request",
            f"snapshot: missing field(s) {missing}, unknown field(s) {unknown}",
        )
    if value["format"] != STREAM_SNAPSHOT_FORMAT:
        raise _bad("snapshot.format", repr(STREAM_SNAPSHOT_FORMAT), value["format"])
    _hex_float("snapshot.fps", value["fps"], MIN_FPS, MAX_FPS)
    _hex_float("snapshot.start", value["start"], 0.0, MAX_START)
    _seq("snapshot.seq")(value["seq"])
    if not isinstance(value["timeline"], list):
        raise _bad("snapshot.timeline", "a list of speed pieces", value["timeline"])
    if not isinstance(value["poses"], dict):
        raise _bad("snapshot.poses", "an object", value["poses"])
    return value


# Per op: field -> validator; every field not listed is rejected.
_FIELDS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "hello": {},
    "skeleton": {"convention": _convention, "rotations": _rotations},
    "sources": {},
    "ping": {},
    "open": {
        "source": _source,
        "seed": _seed,
        "fps": _fps,
        "start": _start,
        "mode": _mode,
        "convention": _convention,
        "rotations": _rotations,
        "velocities": _flag("velocities"),
        "window": _window,
        "snapshot": _stream_snapshot,
        "first_seq": _seq("first_seq"),
    },
    "pull": {"stream": _stream_id, "times": _times, "continuous": _flag("continuous")},
    "close": {"stream": _stream_id},
    "streams": {},
    "switch": {"stream": _stream_id, "source": _source, "seed": _seed},
    "speed": {"stream": _stream_id, "speed": _speed},
    "ack": {"stream": _stream_id, "received": _received},
    "snapshot": {"stream": _stream_id, "seq": _seq("seq")},
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "skeleton": {"convention": "raw", "rotations": "euler"},
    "open": {
        "source": "prior",
        "seed": 0,
        "start": 0.0,
        "mode": "push",
        "convention": "raw",
        "rotations": "euler",
        "velocities": False,
    },
    "pull": {"continuous": True},
    "switch": {"seed": 0},
}
_REQUIRED = {
    "pull": ("stream", "times"),
    "close": ("stream",),
    "switch": ("stream", "source"),
    "speed": ("stream", "speed"),
    "ack": ("stream", "received"),
    "snapshot": ("stream",),
}
_ENVELOPE = ("v", "id", "op", "retry")


@dataclass(frozen=True)
class Request:
    """A validated control request; ``params`` holds every field, defaults filled."""

    id: int | str
    op: str
    params: dict[str, Any]
    retry: bool = False


def _request_id(obj: dict) -> int | str | None:
    """The request's id if it is a valid one, else None."""
    rid = obj.get("id")
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int) and abs(rid) <= 2**53:
        return rid
    if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS:
        return rid
    return None


def decode_request(data: bytes) -> Request:
    """Parse and validate one control request.

    Raises:
        ProtocolError: with ``request_id`` set whenever the id could be read.
    """
    # e.g. b'{"v": 1, "id": 7, "op": "open", "fps": 60, "seed": 3}'
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(
            "bad_json", f"request {short_repr(data[:40])}: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            "bad_json", f"expected a JSON object, got {short_repr(obj)}"
        )

    rid = _request_id(obj)
    if type(obj.get("v")) is not int or obj["v"] != VERSION:  # not 1.0, not true
        raise ProtocolError(
            "bad_version", f"v: expected {VERSION}, got {short_repr(obj.get('v'))}", rid
        )
    if rid is None:
        raise ProtocolError(
            "bad_request",
            "id: expected an integer or a string of at "
            f"most {MAX_ID_CHARS} characters, got "
            f"{short_repr(obj.get('id'))}",
        )
    op = obj.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        raise ProtocolError(
            "unknown_op",
            f"op: expected one of {', '.join(OPS)}, got {short_repr(op)}",
            rid,
        )
    retry = obj.get("retry", False)
    if not isinstance(retry, bool):
        raise ProtocolError(
            "bad_request",
            f"retry: expected true or false, got {short_repr(retry)}",
            rid,
        )

    fields = _FIELDS[op]
    unknown = sorted(set(obj) - set(fields) - set(_ENVELOPE))
    if unknown:
        raise ProtocolError(
            "bad_request",
            f"{op}: unknown field(s) {unknown}; allowed: {sorted(fields)}",
            rid,
        )
    missing = [name for name in _REQUIRED.get(op, ()) if name not in obj]
    if op == "open" and obj.get("mode", "push") != "pull" and "fps" not in obj:
        missing.append("fps")
    if missing:
        raise ProtocolError("bad_request", f"{op}: missing field(s) {missing}", rid)
    params = dict(_DEFAULTS.get(op, {}))
    try:
        params.update({name: fields[name](obj[name]) for name in fields if name in obj})
    except ProtocolError as exc:
        exc.request_id = rid
        raise
    if op == "open" and "snapshot" in obj:
        if params["mode"] == "pull":
            raise ProtocolError(
                "bad_request",
                "snapshot: only a 'push' or 'record' stream opens from one",
                rid,
            )
        given = sorted({"source", "seed"} & set(obj))
        if given:
            raise ProtocolError(
                "bad_request",
                f"{given[0]}: not allowed with a snapshot, which holds the source "
                "and seed",
                rid,
            )
        if "start" not in obj:
            params["start"] = None  # the snapshot's
    elif op == "open" and "first_seq" in obj:
        raise ProtocolError(
            "bad_request",
            "first_seq: only a stream opened from a snapshot has one",
            rid,
        )
    if op == "open" and "window" in obj and params["mode"] != "record":
        raise ProtocolError(
            "bad_request",
            f"window: only a 'record' stream has one, not a {params['mode']!r} one",
            rid,
        )
    return Request(rid, op, params, retry)


def encode_request(
    request_id: int | str, op: str, retry: bool = False, **params: Any
) -> bytes:
    """One control request as UTF-8 JSON bytes."""
    body = {"v": VERSION, "id": request_id, "op": op, **params}
    if retry:
        body["retry"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def encode_reply(request_id: int | str | None, **fields: Any) -> bytes:
    """A success reply: the envelope plus the op's result fields."""
    body = {"v": VERSION, "id": request_id, "ok": True, **fields}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def encode_error(request_id: int | str | None, code: str, message: str) -> bytes:
    """An error reply; ``code`` must be one of ``ERROR_CODES``."""
    assert code in ERROR_CODES, code
    body = {
        "v": VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_reply(data: bytes) -> dict:
    """Parse a reply's JSON frame; raises ProtocolError("bad_reply") if malformed."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(
            "bad_reply", f"reply {short_repr(data[:40])}: {exc}"
        ) from None
    if not (
        isinstance(obj, dict)
        and obj.get("v") == VERSION
        and "id" in obj
        and isinstance(obj.get("ok"), bool)
    ):
        raise ProtocolError(
            "bad_reply", f"expected a v{VERSION} reply object, got {short_repr(obj)}"
        )
    if not obj["ok"]:
        error = obj.get("error")
        if not (isinstance(error, dict) and isinstance(error.get("code"), str)):
            raise ProtocolError(
                "bad_reply", f"error reply without a code: {short_repr(obj)}"
            )
    return obj


# ---------------------------------------------------------------- stream messages


def topic(stream: int) -> bytes:
    """The 9-byte topic of a stream, e.g. ``b"0000002a|"`` for stream 42."""
    return b"%08x|" % stream


@dataclass(frozen=True)
class StreamMessage:
    """One decoded stream message.

    Attributes:
        kind: ``KIND_SKELETON``, ``KIND_FRAME`` or ``KIND_END``.
        seq: a frame's sequence number; for the others, the next frame's.
        t: stream time in seconds of ``seq``, ``start + seq / fps`` in float64.
        sent: server clock in seconds when the message was sent.
        channels: (C,) float32 channel values, frames only.
        info: the JSON payload of skeleton and end messages.
        velocities: (C,) float32 time derivatives of ``channels`` per second of
            stream time, in frames whose flags include ``FLAG_VELOCITIES``.
        flags: the header's flags.
    """

    kind: int
    stream: int
    seq: int
    t: float
    sent: float
    channels: np.ndarray | None = None
    info: dict | None = None
    velocities: np.ndarray | None = None
    flags: int = 0


def _encode(
    kind: int,
    stream: int,
    seq: int,
    t: float,
    sent: float,
    payload: bytes,
    count: int,
    flags: int = 0,
) -> bytes:
    header = HEADER.pack(MAGIC, VERSION, kind, flags, stream, seq, t, sent, count)
    return topic(stream) + header + payload


def encode_frame(
    stream: int,
    seq: int,
    t: float,
    sent: float,
    channels: np.ndarray,
    velocities: np.ndarray | None = None,
) -> bytes:
    """A frame message; ``channels`` (C,) is sent as little-endian float32, then
    ``velocities`` (C,), if given, with ``FLAG_VELOCITIES`` set."""
    flags = 0
    if velocities is not None:
        channels = np.concatenate([np.ravel(channels), np.ravel(velocities)])
        flags = FLAG_VELOCITIES
    values = np.ascontiguousarray(channels, dtype="<f4").reshape(-1)  # (C,) or (2C,)
    return _encode(
        KIND_FRAME, stream, seq, t, sent, values.tobytes(), values.size, flags
    )


def _encode_json(
    kind: int, stream: int, seq: int, t: float, sent: float, info: dict | bytes
) -> bytes:
    if isinstance(info, dict):
        info = json.dumps(info, separators=(",", ":"), allow_nan=False).encode()
    return _encode(kind, stream, seq, t, sent, info, len(info))


def encode_skeleton(
    stream: int, seq: int, t: float, sent: float, info: dict | bytes
) -> bytes:
    """A skeleton message; ``info`` is the JSON object (or its encoded bytes)."""
    return _encode_json(KIND_SKELETON, stream, seq, t, sent, info)


def encode_end(stream: int, seq: int, t: float, sent: float, reason: str) -> bytes:
    """The last message of a stream; ``reason`` says why it ended."""
    return _encode_json(KIND_END, stream, seq, t, sent, {"reason": reason})


def decode_stream_message(data: bytes) -> StreamMessage:
    """Parse one stream message; raises ProtocolError("bad_message") if malformed."""
    start = TOPIC_SIZE + HEADER.size
    if len(data) < start:
        raise ProtocolError(
            "bad_message", f"expected at least {start} bytes, got {len(data)}"
        )
    magic, version, kind, flags, stream, seq, t, sent, count = HEADER.unpack_from(
        data, TOPIC_SIZE
    )
    if magic != MAGIC or version != VERSION or kind not in KINDS:
        raise ProtocolError(
            "bad_message",
            f"header: magic {magic!r}, version "
            f"{version}, kind {kind}; expected {MAGIC!r}, {VERSION}, "
            f"one of {sorted(KINDS)}",
        )
    if data[:TOPIC_SIZE] != topic(stream):
        raise ProtocolError(
            "bad_message", f"topic {data[:TOPIC_SIZE]!r} does not match stream {stream}"
        )
    size = count * 4 if kind == KIND_FRAME else count
    if len(data) - start != size:
        raise ProtocolError(
            "bad_message",
            f"{KINDS[kind]}: count {count} means "
            f"{size} payload bytes, got {len(data) - start}",
        )

    if kind == KIND_FRAME:
        values = np.frombuffer(data, dtype="<f4", count=count, offset=start)
        if not flags & FLAG_VELOCITIES:
            return StreamMessage(kind, stream, seq, t, sent, channels=values)
        if count % 2:
            raise ProtocolError(
                "bad_message",
                f"frame: count {count} is odd, but the flags say values and velocities",
            )
        half = count // 2
        return StreamMessage(
            kind,
            stream,
            seq,
            t,
            sent,
            channels=values[:half],
            velocities=values[half:],
            flags=flags,
        )
    try:
        info = json.loads(data[start:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("bad_message", f"{KINDS[kind]} payload: {exc}") from None
    return StreamMessage(kind, stream, seq, t, sent, info=info)


# ---------------------------------------------------------------- skeleton


def describe_skeleton(skeleton: Any, units_to_m: float) -> dict:
    """The JSON skeleton description of PROTOCOL.md from a ``motionode`` Skeleton.

    Args:
        skeleton: a ``motionode.bvh.Skeleton``.
        units_to_m: metres per rig length unit.
    """
    desc = skeleton.to_dict()
    num_joints = len(desc["names"])
    desc.update(
        rotation_orders=[skeleton.rotation_order(j) for j in range(num_joints)],
        channel_starts=[int(c) for c in skeleton.channel_starts()],
        num_channels=int(skeleton.num_channels),
        units_to_m=float(units_to_m),
        up_axis="Y",
        forward_axis="+Z",
        handedness="right",
        angle_unit="degrees",
        convention="raw",
    )
    return desc
