"""A Python client of the bridge: control requests with retries, stream subscribers.

Neither class is thread-safe; give each thread its own :class:`Client`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import zmq
import zmq.utils.monitor

from bridge import protocol as proto
from bridge.protocol import ProtocolError
from bridge.security import ClientKeys

if TYPE_CHECKING:
    from typing import Self

logger = logging.getLogger(__name__)

__all__ = [
    "AuthenticationError",
    "Client",
    "ClientStream",
    "Frame",
    "JointPoses",
    "QuaternionLayout",
    "StreamEnded",
    "blend",
]

PULL_WALK_S = 5.0  # stream seconds per step when a reopened pull stream catches up
# With recovery on, a push stream's snapshot is renewed after this many seconds of
# stream time (and after every switch or speed change made through this client).
SNAPSHOT_EVERY_S = 2.0
ACK_RESEND = 0.25  # seconds a recording waits for a frame before acknowledging again

# Handshake failures a client can see: a server that refused our CURVE key (AUTH),
# or one whose security differs from ours, e.g. CURVE against plain (PROTOCOL).
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def blend(*parts: tuple[str, float] | tuple[str, float, int]) -> dict:
    """A blended source for ``open`` or ``switch``, from (source, weight) or
    (source, weight, seed) tuples; weights must sum to 1.

    Example: ``blend(("clip:walk", 0.5), ("prior", 0.5, 3))``.
    """
    out = []
    for part in parts:
        item = {"source": part[0], "weight": part[1]}
        if len(part) > 2:
            item["seed"] = part[2]
        out.append(item)
    return {"blend": out}


class JointPoses(NamedTuple):
    """Poses of a quaternion stream, per joint (PROTOCOL.md, "Quaternion poses").

    Leading axes (...) are those of the values decoded: none for one frame, (T,)
    for pulled rows. Everything is in the stream's convention (axes, handedness,
    unit), as float32.

    Attributes:
        translations: (..., J, 3) each joint's local translation: its offset, with
            its position channels in place of the components they replace.
        quaternions: (..., J, 4) each joint's local rotation relative to its
            parent, a unit quaternion in the skeleton's ``quaternion_order`` (e.g.
            x, y, z, w for Unity), with w >= 0.
        translation_rates: (..., J, 3) time derivatives of ``translations`` per
            second of stream time, for a stream opened with ``velocities``.
        quaternion_rates: (..., J, 4) exact time derivatives of ``quaternions``,
            same order, for a stream opened with ``velocities``.
    """

    translations: np.ndarray
    quaternions: np.ndarray
    translation_rates: np.ndarray | None = None
    quaternion_rates: np.ndarray | None = None


@dataclass(frozen=True)
class QuaternionLayout:
    """Where a quaternion stream's values sit, read from its skeleton description.

    Attributes:
        order: the quaternion component order, e.g. "xyzw" or "wxyz".
        offsets: (J, 3) float32 joint offsets from the description.
        position_columns: (P,) int, value index of each position channel.
        position_slots: (P,) int, ``3 * joint + axis`` each one replaces.
        quaternion_columns: (J, 4) int, value index of each joint's quaternion
            components, in ``order``.
        width: W, values per pose.
    """

    order: str
    offsets: np.ndarray
    position_columns: np.ndarray
    position_slots: np.ndarray
    quaternion_columns: np.ndarray
    width: int

    @classmethod
    def from_skeleton(cls, skeleton: dict) -> QuaternionLayout:
        """The layout of a description with ``rotations`` "quaternion".

        Raises:
            ValueError: the description is not one of quaternion poses.
        """
        if skeleton.get("rotations") != "quaternion":
            raise ValueError(
                "skeleton: expected a description with rotations 'quaternion', got "
                f"{proto.short_repr(skeleton.get('rotations'))}"
            )
        order = skeleton["quaternion_order"]
        columns, slots, quaternions = [], [], []
        for j, (names, start) in enumerate(
            zip(skeleton["layout"], skeleton["value_starts"])
        ):
            for k, name in enumerate(names):
                if name.endswith("position"):
                    columns.append(start + k)
                    slots.append(3 * j + "XYZ".index(name[0]))
            quaternions.append([start + names.index(f"q{a}") for a in order])
        return cls(
            order,
            np.asarray(skeleton["offsets"], dtype=np.float32).reshape(-1, 3),
            np.array(columns, dtype=np.int64),
            np.array(slots, dtype=np.int64),
            np.array(quaternions, dtype=np.int64).reshape(-1, 4),
            int(skeleton["num_values"]),
        )

    def decode(self, values: np.ndarray, rates: np.ndarray | None = None) -> JointPoses:
        """Values (..., W), and optionally their rates (..., W), as joints."""
        values = np.asarray(values, dtype=np.float32)
        lead = values.shape[:-1]
        moved = np.broadcast_to(self.offsets, lead + self.offsets.shape).copy()
        flat = moved.reshape(lead + (-1,))  # (..., 3J), a view of moved
        flat[..., self.position_slots] = values[..., self.position_columns]
        if rates is None:
            return JointPoses(moved, values[..., self.quaternion_columns])
        rates = np.asarray(rates, dtype=np.float32)
        speed = np.zeros_like(moved)
        speed.reshape(lead + (-1,))[..., self.position_slots] = rates[
            ..., self.position_columns
        ]
        return JointPoses(
            moved,
            values[..., self.quaternion_columns],
            speed,
            rates[..., self.quaternion_columns],
        )


class Frame(NamedTuple):
    """One pose of a push stream.

    Attributes:
        seq: frame number, counting from 0 at the stream's start.
        t: stream time in seconds, ``start + seq / fps``.
        sent: server clock in seconds when it was sent (see ``Client.clock_offset``).
        channels: (C,) float32 BVH channel values of the stream's skeleton; for a
            stream opened with ``rotations="quaternion"``, its (W,) values as sent
            (see ``joints``).
        velocities: (C,) float32 their time derivatives per second of stream time,
            for a stream opened with ``velocities``; else None.
        joints: a quaternion stream's pose per joint (and its rates, with
            ``velocities``); None for Euler channels.
    """

    seq: int
    t: float
    sent: float
    channels: np.ndarray
    velocities: np.ndarray | None = None
    joints: JointPoses | None = None


HEARTBEAT_MS = 1000  # ZeroMQ heartbeats: a server that vanished without closing
HEARTBEAT_TIMEOUT_MS = 5000  # its connections is noticed, and reconnected to


def _heartbeat(socket: zmq.Socket) -> None:
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


class AuthenticationError(ConnectionError):
    """The server refused the connection's security handshake: our CURVE key is
    not on its list, the server key is wrong, or only one side uses CURVE."""


class StreamEnded(Exception):
    """The server ended the stream; ``reason`` is "closed", "expired", "error" or
    "server_stopped"."""

    def __init__(self, stream: int, reason: str) -> None:
        super().__init__(f"stream {stream} ended: {reason}")
        self.stream = stream
        self.reason = reason


class Client:
    """Talks to one bridge server.

    Reading a stream with :meth:`ClientStream.recv` keeps this client's leases
    alive: it sends a ``ping`` (without waiting for its reply) whenever nothing has
    been sent for a third of the server's lease.

    A request that gets no reply within ``timeout`` is sent again, marked as a
    retry, on a fresh socket with the same routing id, up to ``retries`` times; the
    server answers a retry of a request it already ran with the stored reply, so an
    ``open`` is never run twice. Replies to earlier requests are discarded.

    Args:
        control_endpoint: the server's control socket, e.g. "tcp://127.0.0.1:5555".
        stream_endpoint: its stream socket; by default asked with ``hello``.
        timeout: seconds to wait for each reply, and for a new stream's skeleton.
        retries: how many times a request is sent again after a timeout.
        keys: CURVE keys (see ``bridge.security``), for a server that uses them.
        routing_id: this client's identity on the server; give the one of an
            earlier client (``Client.routing_id``) to take its streams up again
            within their lease (see :meth:`streams` and :meth:`resume`).
        recover: seconds to wait for a server that stopped or restarted; 0 (the
            default) lets :class:`StreamEnded` through instead. With recovery on,
            each push stream and recording keeps a recent snapshot of its state
            (the ``snapshot`` op, renewed every ``SNAPSHOT_EVERY_S`` seconds of
            stream time and after each :meth:`switch` and :meth:`set_speed`
            made here), and a restarted server opens it again from that snapshot:
            the frames from the next one not received on are exactly those the
            stream would have sent, switches and speed changes included, at any
            age. Without a snapshot (none obtained yet, or a server that refuses
            it, e.g. one with another model) the stream is opened again with the
            same source, seed and settings from the stream time it had reached,
            which is the same motion only up to 60 s without switches or speed
            changes (a warning says so). A pull stream is always opened again
            that way.
        context: ZeroMQ context; by default the client makes its own.
    """

    def __init__(
        self,
        control_endpoint: str,
        stream_endpoint: str | None = None,
        timeout: float = 2.0,
        retries: int = 3,
        keys: ClientKeys | None = None,
        routing_id: bytes | None = None,
        recover: float = 0.0,
        context: zmq.Context | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout: expected a positive number, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries: expected 0 or more, got {retries!r}")
        if not recover >= 0:
            raise ValueError(f"recover: expected seconds >= 0, got {recover!r}")
        self.control_endpoint = control_endpoint
        self.stream_endpoint = stream_endpoint
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.keys = keys
        self._monitor: zmq.Socket | None = None
        self._own_context = context is None
        self._context = context or zmq.Context()
        self.routing_id = routing_id or b"motionode-" + secrets.token_hex(8).encode()
        self.recover = float(recover)
        self._opened: dict[int, dict] = {}  # pull stream -> its open request
        self._alias: dict[int, int] = {}  # pull stream -> its id after a restart
        self._next_id = 1
        self._last_sent = time.monotonic()
        self._lease: float | None = None  # the server's, once hello has told it
        self._streams: list[ClientStream] = []
        self._layouts: dict[str, QuaternionLayout] = {}  # per convention
        self._socket = self._connect()

    def _connect(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        socket.linger = 0
        socket.setsockopt(zmq.ROUTING_ID, self.routing_id)
        _heartbeat(socket)
        if self.keys is not None:
            self.keys.secure(socket)
        self._close_monitor()
        self._monitor = socket.get_monitor_socket(_HANDSHAKE_FAILED)
        socket.connect(self.control_endpoint)
        return socket

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None

    def _check_handshake(self, op: str) -> None:
        """Raise AuthenticationError if the control socket's handshake failed."""
        if self._monitor is None or not self._monitor.poll(0):
            return
        event = zmq.utils.monitor.recv_monitor_message(self._monitor)["event"]
        why = {
            zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused our CURVE key "
            "(not on its list of allowed clients)",
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "its security differs from ours "
            "(CURVE on one side only?)",
        }.get(event, "wrong server key or broken security settings")
        raise AuthenticationError(
            f"{op}: {self.control_endpoint}: security handshake failed: {why}"
        )

    def request(self, op: str, **params: Any) -> tuple[dict, list[bytes]]:
        """Send one request; return the reply object and any further reply frames.

        Raises:
            ProtocolError: the server answered with an error.
            TimeoutError: no reply after ``retries + 1`` attempts.
            AuthenticationError: the server refused our security handshake.
            ValueError: the request is larger than the server accepts.
        """
        request_id = self._next_id
        self._next_id += 1
        for attempt in range(self.retries + 1):
            data = proto.encode_request(request_id, op, retry=attempt > 0, **params)
            if len(data) > proto.MAX_REQUEST_BYTES:
                raise ValueError(
                    f"{op}: request of {len(data)} bytes exceeds the "
                    f"limit of {proto.MAX_REQUEST_BYTES}"
                )
            self._socket.send(data)
            self._last_sent = time.monotonic()
            reply = self._await(request_id)
            if reply is None:
                self._check_handshake(op)
            if reply is not None:
                obj, extra = reply
                if not obj["ok"]:
                    error = obj["error"]
                    raise ProtocolError(
                        error["code"], str(error.get("message")), request_id
                    )
                return obj, extra
            logger.warning(
                "%s: no reply from %s within %.1f s (attempt %d of %d); reconnecting",
                op,
                self.control_endpoint,
                self.timeout,
                attempt + 1,
                self.retries + 1,
            )
            self._socket.close()
            self._socket = self._connect()
        raise TimeoutError(
            f"{op}: no reply from {self.control_endpoint} after "
            f"{self.retries + 1} attempts of {self.timeout:g} s"
        )

    def _await(self, request_id: int) -> tuple[dict, list[bytes]] | None:
        """The reply to ``request_id``, or None once ``timeout`` has passed."""
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self._socket.poll(max(1, int(left * 1000))):
                break
            frames = self._socket.recv_multipart()
            try:
                obj = proto.decode_reply(frames[0])
            except ProtocolError as exc:
                logger.warning("dropping a malformed reply: %s", exc)
                continue
            if obj["id"] != request_id:
                logger.debug("discarding a stale reply to request %r", obj["id"])
                continue
            return obj, frames[1:]
        return None

    # ------------------------------------------------------------ operations

    def keep_alive(self) -> None:
        """Renew this client's leases now, without waiting for the reply."""
        self._send_unanswered("ping")

    def _send_unanswered(self, op: str, **params: Any) -> None:
        """Send a request whose reply will be discarded unread."""
        while self._socket.poll(0):  # replies to earlier such requests
            self._socket.recv_multipart()
        request_id = self._next_id
        self._next_id += 1
        try:
            self._socket.send(
                proto.encode_request(request_id, op, **params), zmq.NOBLOCK
            )
        except zmq.Again:
            logger.debug("%s not sent: the server is not reading", op)
        self._last_sent = time.monotonic()

    def _keep_alive_due(self) -> None:
        if self._lease is not None and (
            time.monotonic() - self._last_sent > self._lease / 3
        ):
            self.keep_alive()

    def hello(self) -> dict:
        """Server, protocol and model information (see PROTOCOL.md, ``hello``)."""
        reply = self.request("hello")[0]
        self._lease = float(reply["limits"]["lease"])
        return reply

    def skeleton(self, convention: str = "raw", rotations: str = "euler") -> dict:
        """The skeleton description (see PROTOCOL.md, "Skeleton description"), in
        ``convention``, for poses with ``rotations`` ("euler" or "quaternion")."""
        extra = {"rotations": rotations} if rotations != "euler" else {}
        reply = self.request("skeleton", convention=convention, **extra)[0]
        return reply["skeleton"]

    def sources(self) -> list[str]:
        return self.request("sources")[0]["sources"]

    def ping(self) -> float:
        """The server clock, in seconds."""
        return self.request("ping")[0]["clock"]

    def clock_offset(self, samples: int = 5) -> float:
        """Server clock minus this process's ``time.monotonic()``, in seconds,
        from the ping with the shortest round trip."""
        best = None
        for _ in range(samples):
            sent = time.monotonic()
            server = self.ping()
            received = time.monotonic()
            if best is None or received - sent < best[0]:
                best = (received - sent, server - (sent + received) / 2)
        return best[1]

    def open_stream(
        self,
        source: str | dict = "prior",
        fps: float = 60.0,
        seed: int = 0,
        start: float = 0.0,
        velocities: bool = False,
        convention: str = "raw",
        rotations: str = "euler",
    ) -> ClientStream:
        """Open a push stream and subscribe to it; returns once its skeleton is in.

        ``source`` is a name from :meth:`sources` or a blend (see :func:`blend`).
        With ``velocities`` every frame also carries the channels' exact time
        derivatives (``Frame.velocities``). ``convention`` ("raw", "blender",
        "unity", "unreal", "godot") sets the axes, handedness and unit of the
        skeleton and of every pose. ``rotations="quaternion"`` sends each joint's
        local rotation as a quaternion instead of Euler angles; frames then also
        come decoded per joint (``Frame.joints``).

        Raises:
            TimeoutError: the skeleton did not arrive within ``timeout``.
        """
        extra = {
            "convention": convention,
            **({"velocities": True} if velocities else {}),
            **({"rotations": rotations} if rotations != "euler" else {}),
        }
        return self._subscribe("push", source, fps, seed, start, extra)

    def open_recording(
        self,
        source: str | dict = "prior",
        fps: float = 60.0,
        seed: int = 0,
        start: float = 0.0,
        velocities: bool = False,
        window: int = proto.DEFAULT_WINDOW,
        convention: str = "raw",
        rotations: str = "euler",
    ) -> ClientStream:
        """Open a recording: frames ``fps`` apart in stream time, sent as fast as
        the server computes them and this client acknowledges them, none lost.

        :meth:`ClientStream.recv` acknowledges frames as it returns them, so the
        server never has more than ``window`` frames in flight; a reader that
        pauses only pauses the recording.
        """
        extra = {
            "window": window,
            "convention": convention,
            **({"velocities": True} if velocities else {}),
            **({"rotations": rotations} if rotations != "euler" else {}),
        }
        return self._subscribe("record", source, fps, seed, start, extra)

    def _subscribe(
        self,
        mode: str,
        source: str | dict,
        fps: float,
        seed: int,
        start: float,
        extra: dict,
    ) -> ClientStream:
        """Open a push stream or a recording and subscribe to it."""
        fields = self.request(
            "open", source=source, fps=fps, seed=seed, start=start, mode=mode, **extra
        )[0]
        if self.stream_endpoint is None or self._lease is None:
            endpoint = self.hello()["stream_endpoint"]
            self.stream_endpoint = self.stream_endpoint or endpoint
        try:
            stream = ClientStream(self, fields)
        except TimeoutError:
            self.close_stream(fields["stream"])
            raise
        self._streams.append(stream)
        return stream

    def open_pull(
        self,
        source: str | dict = "prior",
        seed: int = 0,
        velocities: bool = False,
        convention: str = "raw",
        rotations: str = "euler",
    ) -> int:
        """Open a pull stream; returns its id for :meth:`pull`. With
        ``velocities`` its pulls return each row's time derivatives too. Its
        skeleton is ``skeleton(convention, rotations)``; with
        ``rotations="quaternion"``, :meth:`pull_joints` decodes its rows."""
        extra = {"velocities": True} if velocities else {}
        if rotations != "euler":
            extra["rotations"] = rotations
        params = {"source": source, "seed": seed, "mode": "pull"}
        params["convention"] = convention
        stream = self.request("open", **params, **extra)[0]["stream"]
        self._opened[stream] = {**params, **extra}
        return stream

    def pull(
        self, stream_id: int, times: np.ndarray | list[float], continuous: bool = True
    ) -> np.ndarray:
        """Poses (T, C) float32 of a pull stream at ``times`` (T,) seconds, >= 0;
        (T, 2C) for a stream opened with ``velocities``: each row's C values, then
        their C time derivatives per second of stream time.

        Args:
            times: 1 to ``MAX_PULL_TIMES`` stream times, in any order.
            continuous: unwrap Euler angles over the asked times in time order (no
                360-degree jumps); if false, each row holds principal angles and
                depends on its own time only.
        """
        times = np.asarray(times, dtype=np.float64).reshape(-1)  # (T,)
        try:
            fields, extra = self.request(
                "pull",
                stream=self._alias.get(stream_id, stream_id),
                times=times.tolist(),
                continuous=continuous,
            )
        except ProtocolError as exc:
            if not (exc.code == "unknown_stream" and self._reopen_pull(stream_id)):
                raise
            # A new stream reaches only so far at once: walk it to these times, in
            # steps short enough to be answered within the timeout.
            for t in np.arange(PULL_WALK_S, times.max(), PULL_WALK_S):
                self.request("pull", stream=self._alias[stream_id], times=[float(t)])
            fields, extra = self.request(
                "pull",
                stream=self._alias[stream_id],
                times=times.tolist(),
                continuous=continuous,
            )
        count, channels = fields["count"], fields["channels"]
        if fields.get("velocities"):
            channels *= 2
        if len(extra) != 1 or len(extra[0]) != count * channels * 4:
            raise ProtocolError(
                "bad_reply",
                f"pull: expected one frame of {count * channels * 4} bytes after "
                "the reply",
            )
        values = np.frombuffer(extra[0], dtype="<f4")  # (T * C,)
        return values.reshape(count, channels)  # (T, C)

    def pull_joints(
        self, stream_id: int, times: np.ndarray | list[float], continuous: bool = True
    ) -> JointPoses:
        """Poses of a pull stream opened with ``rotations="quaternion"``, per
        joint, with leading axis (T,) for ``times`` (see :meth:`pull`); with
        ``velocities``, their rates too.

        Raises:
            ValueError: the stream was not opened here with quaternion rotations.
        """
        opened = self._opened.get(stream_id, {})
        if opened.get("rotations") != "quaternion":
            raise ValueError(
                f"stream: {stream_id} was not opened by this client with "
                "rotations='quaternion'"
            )
        convention = opened["convention"]
        if convention not in self._layouts:
            self._layouts[convention] = QuaternionLayout.from_skeleton(
                self.skeleton(convention, "quaternion")
            )
        layout = self._layouts[convention]
        rows = self.pull(stream_id, times, continuous)  # (T, W) or (T, 2W)
        if opened.get("velocities"):
            return layout.decode(rows[:, : layout.width], rows[:, layout.width :])
        return layout.decode(rows)

    def _reopen_pull(self, stream_id: int) -> bool:
        """After a server restart: open a pull stream like ``stream_id`` again.
        False if recovery is off."""
        # TODO: pull streams carry no snapshot: the new one is solved forward from
        # time 0 again, and switches and speed changes of the old one are lost.
        if not self.recover or stream_id not in self._opened:
            return False
        new = self.request("open", **self._opened[stream_id])[0]["stream"]
        logger.warning(
            "pull stream %d: the server lost it (restarted?); opened it again as %d",
            stream_id,
            new,
        )
        self._alias[stream_id] = new
        return True

    def streams(self) -> list[dict]:
        """This client's open streams on the server (by routing id), each as its
        ``open`` reply described it."""
        return self.request("streams")[0]["streams"]

    def resume(self, fields: dict) -> ClientStream | int:
        """Take up a stream listed by :meth:`streams` after reconnecting with the
        same routing id: a push stream or recording is subscribed again (its
        skeleton comes first), a pull stream's id is returned for :meth:`pull`."""
        if fields["mode"] == "pull":
            return fields["stream"]
        if self.stream_endpoint is None:
            self.stream_endpoint = self.hello()["stream_endpoint"]
        stream = ClientStream(self, fields)
        self._streams.append(stream)
        return stream

    def switch(
        self, stream: int | ClientStream, source: str | dict, seed: int = 0
    ) -> dict:
        """Cross-fade a live stream into another source (a name or a blend).

        Returns:
            the reply: ``at``, the stream time at which the cross-fade starts (None
            while the stream is paused), and ``motion_time``, the same instant in
            motion time.
        """
        stream_id = stream.id if isinstance(stream, ClientStream) else stream
        reply = self.request("switch", stream=stream_id, source=source, seed=seed)[0]
        self._controlled(stream_id)
        return reply

    def set_speed(self, stream: int | ClientStream, speed: float) -> dict:
        """Play a stream at ``speed`` (0 pauses, 1 is real time, at most 4).

        Returns:
            the reply: ``at``, the stream time from which the speed applies, and
            ``motion_time`` there.
        """
        stream_id = stream.id if isinstance(stream, ClientStream) else stream
        reply = self.request("speed", stream=stream_id, speed=speed)[0]
        self._controlled(stream_id)
        return reply

    def _controlled(self, stream_id: int) -> None:
        """A control changed a stream's future: renew its snapshot now."""
        for stream in self._streams:
            if stream.id == stream_id and self.recover:
                stream._renew_snapshot(stale=True)

    def close_stream(self, stream: int | ClientStream) -> None:
        """Ask the server to close a stream (an id, or a :class:`ClientStream`)."""
        stream_id = stream.id if isinstance(stream, ClientStream) else stream
        self.request("close", stream=stream_id)

    def close(self) -> None:
        """Close every socket; streams left open on the server end with their
        lease."""
        for stream in self._streams:
            stream._socket.close()
        self._streams.clear()
        self._socket.disable_monitor()
        self._close_monitor()
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClientStream:
    """A push stream as its subscriber sees it.

    Attributes:
        id: the stream id; ``fps``, ``start``, ``source``, ``seed`` as opened.
        info: the latest skeleton message's JSON object.
        skeleton: its skeleton description.
        gaps: frames missed so far, counted from sequence numbers.
        ended: why the stream ended, once it has.
    """

    def __init__(self, client: Client, fields: dict) -> None:
        self.fields = fields
        self.restarts = 0  # times the stream was opened again after a restart
        self._seq_offset = 0  # seq as counted here minus the server's
        self._server_start: float = fields["start"]  # start on the server
        # The latest snapshot reply (``seq``, ``snapshot``, ...), with recovery on,
        # and the stream time at which it was asked for.
        self.snapshot: dict | None = None
        self._snapshot_t = -float("inf")
        self.id: int = fields["stream"]
        self.fps: float = fields["fps"]
        self.start: float = fields["start"]
        self.source: str | dict = fields["source"]
        self.seed: int = fields["seed"]
        self.mode: str = fields["mode"]
        self.window: int | None = fields.get("window")  # recordings only
        self._acked = 0  # frames a recording has acknowledged
        self.gaps = 0
        self.ended: str | None = None
        self.info: dict = {}
        self.skeleton: dict = {}
        self.layout: QuaternionLayout | None = None  # quaternion streams only
        self._client = client
        self._next_seq: int | None = None
        self._socket = client._context.socket(zmq.SUB)
        self._socket.linger = 0
        _heartbeat(self._socket)
        if client.keys is not None:
            client.keys.secure(self._socket)
        self._socket.connect(client.stream_endpoint)
        self._socket.setsockopt(zmq.SUBSCRIBE, fields["topic"].encode())

        # The server publishes nothing on a stream before its skeleton message.
        message = self._receive(client.timeout)
        if message is None or message.kind != proto.KIND_SKELETON:
            self._socket.close()
            raise TimeoutError(
                f"stream {self.id}: no skeleton message within {client.timeout:g} s"
            )
        self._take_skeleton(message)

    def _receive(self, timeout: float) -> proto.StreamMessage | None:
        """The next well-formed message, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self._socket.poll(max(1, int(left * 1000))):
                return None
            data = self._socket.recv()
            try:
                return proto.decode_stream_message(data)
            except ProtocolError as exc:
                logger.warning(
                    "stream %d: dropping a malformed message: %s", self.id, exc
                )
        return None

    def _take_skeleton(self, message: proto.StreamMessage) -> None:
        self.info = message.info
        self.skeleton = message.info["skeleton"]
        if self.skeleton.get("rotations") == "quaternion":
            self.layout = QuaternionLayout.from_skeleton(self.skeleton)
        if self._next_seq is None:
            self._next_seq = message.seq

    def recv(self, timeout: float = 1.0) -> Frame:
        """The next frame.

        Raises:
            TimeoutError: none within ``timeout`` seconds.
            StreamEnded: the server ended the stream.
        """
        deadline = time.monotonic() + timeout
        self._client._keep_alive_due()
        while self.ended is None:
            left = deadline - time.monotonic()
            if self.window is not None:
                left = min(left, ACK_RESEND)
            message = self._receive(left)
            if message is None and time.monotonic() < deadline:
                self._acknowledge()  # the last one may have been lost
                continue
            if message is None:
                if self._client.recover and self._lost():
                    deadline = time.monotonic() + timeout
                    continue
                raise TimeoutError(f"stream {self.id}: no frame within {timeout:g} s")
            if message.kind == proto.KIND_SKELETON:
                self._take_skeleton(message)
            elif message.kind == proto.KIND_END:
                reason = str(message.info.get("reason"))
                if reason == "server_stopped" and self._client.recover:
                    self._reopen()
                    deadline = time.monotonic() + timeout
                    continue
                self.ended = reason
            else:
                # After a reopen, frames keep this stream's numbering and times.
                seq = message.seq + self._seq_offset
                t = self.start + seq / self.fps if self._seq_offset else message.t
                if seq != self._next_seq:
                    logger.warning(
                        "stream %d: expected frame %d, got %d",
                        self.id,
                        self._next_seq,
                        seq,
                    )
                    self.gaps += max(0, seq - self._next_seq)
                self._next_seq = seq + 1
                if self.window is not None and (
                    self._next_seq - self._acked >= self.window // 2
                ):
                    self._acknowledge()
                joints = (
                    None
                    if self.layout is None
                    else self.layout.decode(message.channels, message.velocities)
                )
                if self._client.recover and t - self._snapshot_t >= SNAPSHOT_EVERY_S:
                    self._renew_snapshot()
                return Frame(
                    seq, t, message.sent, message.channels, message.velocities, joints
                )
        raise StreamEnded(self.id, self.ended)

    def _lost(self) -> bool:
        """No frame for a whole timeout: reopen if the server no longer has this
        stream (it restarted without an end message reaching us)."""
        try:
            mine = {s["stream"] for s in self._client.streams()}
        except (TimeoutError, ProtocolError):
            mine = set()
        if self.id in mine:
            return False
        self._reopen()
        return True

    def _renew_snapshot(self, stale: bool = False) -> None:
        """Ask for a snapshot from the next frame not received here on; keep the
        one before if that fails, unless it is ``stale`` (a control it lacks was
        made since)."""
        self._snapshot_t = self.start + (self._next_seq or 0) / self.fps
        try:
            self.snapshot = self._client.request(
                "snapshot", stream=self.id, seq=(self._next_seq or 0) - self._seq_offset
            )[0]
        except (TimeoutError, ProtocolError, zmq.ZMQError) as exc:
            logger.warning("stream %d: no snapshot: %s", self.id, exc)
            if stale:
                self.snapshot = None

    def _open_again(
        self, params: dict, resume_seq: int, deadline: float
    ) -> tuple[dict, bool, float]:
        """Open the stream on the restarted server: from the snapshot if there is
        one the server takes, else from its source; return the reply, whether it
        came from the snapshot, and the new stream's start."""
        client = self._client
        t = self.start + resume_seq / self.fps
        while True:
            try:
                if self.snapshot is not None:
                    try:
                        reply = client.request(
                            "open",
                            **params,
                            snapshot=self.snapshot["snapshot"],
                            first_seq=resume_seq - self._seq_offset,
                        )[0]
                        return reply, True, self._server_start
                    except ProtocolError as exc:
                        logger.warning(
                            "stream %d: the server refused its snapshot: %s",
                            self.id,
                            exc,
                        )
                        self.snapshot = None
                exact = t <= proto.MAX_START
                start = t if exact else 0.0
                reply = client.request(
                    "open",
                    **params,
                    source=self.fields["source"],
                    seed=self.fields["seed"],
                    start=start,
                )[0]
                if not exact:
                    logger.warning(
                        "stream %d: reopened from its source's start; the same "
                        "motion continues exactly only up to %g s",
                        self.id,
                        proto.MAX_START,
                    )
                return reply, False, start
            except (TimeoutError, zmq.ZMQError) as exc:
                if time.monotonic() > deadline:
                    self.ended = "server_stopped"
                    raise StreamEnded(self.id, f"server_stopped ({exc})") from None

    def _reopen(self) -> None:
        """Open this stream again on a restarted server from the next frame this
        client has not had, and subscribe to it: frames keep this stream's seq and
        time stamps, and none is skipped (the stream's time falls behind the wall
        clock by the outage, as a paused stream's would). From a snapshot, the
        server numbers the frames as before."""
        client, fields = self._client, self.fields
        deadline = time.monotonic() + client.recover
        resume_seq = self._next_seq or 0
        params = {
            k: fields[k]
            for k in ("fps", "mode", "convention", "rotations", "window")
            if fields.get(k) is not None
        }
        if fields.get("velocities"):
            params["velocities"] = True
        reply, exact, start = self._open_again(params, resume_seq, deadline)
        self._socket.setsockopt(zmq.UNSUBSCRIBE, self.fields["topic"].encode())
        self.fields = {**fields, "stream": reply["stream"], "topic": reply["topic"]}
        self._socket.setsockopt(zmq.SUBSCRIBE, reply["topic"].encode())
        self.id = reply["stream"]
        if not exact:
            self._seq_offset = resume_seq
            self._server_start = start
        self._next_seq = resume_seq
        self._acked = resume_seq
        self.restarts += 1
        logger.warning(
            "stream reopened as %d from t = %.3f s%s",
            self.id,
            self.start + resume_seq / self.fps,
            " from its snapshot" if exact else "",
        )

    def _acknowledge(self) -> None:
        """Tell the server how many frames of a recording have arrived."""
        if self.window is None or self._next_seq is None:
            return
        received = self._next_seq - self._seq_offset  # in the server's numbering
        self._client._send_unanswered("ack", stream=self.id, received=received)
        self._acked = self._next_seq

    def frames(self, timeout: float = 1.0) -> Iterator[Frame]:
        """Frames until the stream ends; TimeoutError if one takes over ``timeout``."""
        while True:
            try:
                yield self.recv(timeout)
            except StreamEnded:
                return

    def close(self) -> None:
        """Unsubscribe, and close the stream on the server if it is still open."""
        if self._socket.closed:
            return
        self._socket.close()
        if self in self._client._streams:
            self._client._streams.remove(self)
        if self.ended is None:
            try:
                self._client.close_stream(self.id)
            except ProtocolError as exc:
                if exc.code != "unknown_stream":
                    raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
