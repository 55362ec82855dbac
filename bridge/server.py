"""The bridge server: a motion model behind two ZeroMQ sockets (see PROTOCOL.md).

Four threads:

- the control thread owns the ROUTER socket and answers requests in order of
  arrival, all but pulls at once;
- a worker computes pull replies, one at a time, so a long pull holds back only
  its own reply; the control thread sends it when it is done;
- the solver computes push frames and recordings ahead of their time, all streams
  together (see :mod:`bridge.streams`);
- the stream thread owns the XPUB socket: it reads subscriptions, and publishes
  every computed frame when it falls due on the server clock.

They share the table of open streams, under a lock. A stream's pose generator and
timeline are used under that stream's own lock (the solver and the worker compute
with them, the control thread switches sources and changes speeds), and its queue
of computed frames under its send lock.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from bridge import protocol as proto
from bridge.conventions import ChannelMap, channel_map
from bridge.protocol import ProtocolError
from bridge.security import ServerKeys
from bridge.streams import Solver
from bridge.streams import Stream as _Stream
from bridge.timeline import Timeline
from motionode.generate import PoseStream
from motionode.snapshots import SnapshotError

if TYPE_CHECKING:
    from typing import Self

    from zmq.auth.thread import ThreadAuthenticator

logger = logging.getLogger(__name__)

__all__ = ["Server", "check_endpoint"]

IDLE_POLL = 0.05  # longest sleep of either loop, so stop() and leases act promptly
MAX_BATCH = 32  # frames per stream per pass, so one late stream cannot starve others
LATE_WARNING = 1.0  # seconds behind the clock before a stream's lateness is logged
REPLY_CACHE = 256  # routing ids whose last reply is kept for retried requests
XPUB_LINGER_MS = 100  # time given to the final end messages when stopping
XPUB_QUEUE = 100_000  # frames queued per subscriber before ZeroMQ drops any
HEARTBEAT_MS = 1000  # ZeroMQ heartbeat on both sockets: a vanished peer is noticed
HEARTBEAT_TIMEOUT_MS = 5000  # and its connection dropped after this long
BAD_INPUT_LOGS = 20  # malformed messages logged in full per minute; the rest counted
# Seconds of stream time of speed history a push stream keeps before its latest
# change, so that a snapshot may start at a frame its client has not received yet.
TIMELINE_KEEP_S = 10.0


class _LogBudget:
    """Lets ``limit`` log lines through per ``period`` seconds and counts the rest,
    so a flood of bad input cannot flood the log as well."""

    def __init__(self, limit: int, period: float = 60.0) -> None:
        self.limit = limit
        self.period = period
        self._start = -math.inf
        self._used = 0
        self._held = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._start >= self.period:
            if self._held:
                logger.error(
                    "%d more malformed messages in the last %.0f s were not logged",
                    self._held,
                    self.period,
                )
            self._start, self._used, self._held = now, 0, 0
        if self._used < self.limit:
            self._used += 1
            return True
        self._held += 1
        return False


def check_endpoint(
    name: str, endpoint: str, secured: bool = False, insecure: bool = False
) -> str:
    """Check an endpoint the server is asked to bind; return the one to bind.

    ``tcp://127.0.0.1:0`` becomes ``tcp://127.0.0.1:*`` (any free port); ``ipc://``
    and ``inproc://`` pass unchanged. Any tcp host other than 127.0.0.1 may be
    reached from other machines, so it needs CURVE (``secured``) or the explicit
    opt-out ``insecure``, which is logged as a warning.

    Raises:
        ValueError: not a tcp, ipc or inproc endpoint, or a tcp host other than
            127.0.0.1 with neither ``secured`` nor ``insecure``.
    """
    scheme, sep, rest = endpoint.partition("://")
    if sep and scheme in ("ipc", "inproc"):
        return endpoint
    host, colon, port = rest.rpartition(":")
    if not (sep and scheme == "tcp" and colon and host and port):
        raise ValueError(
            f"{name}: expected an endpoint such as 'tcp://127.0.0.1:5555'"
            f" or 'ipc:///tmp/motionode', got {endpoint!r}"
        )
    if host != "127.0.0.1" and not secured:
        if not insecure:
            raise ValueError(
                f"{name}: {endpoint!r} binds {host!r}, which other machines may "
                "reach; give CURVE keys (keys=ServerKeys...) so only allowed "
                "clients get in, or insecure=True to serve anyone unencrypted"
            )
        logger.warning(
            "%s: binding %s WITHOUT AUTHENTICATION OR ENCRYPTION: anyone who "
            "reaches this address can open streams and read every frame",
            name,
            endpoint,
        )
    return f"tcp://{host}:*" if port == "0" else endpoint


class _Later:
    """A reply computed off the control thread: ``compute() -> (fields, extra)``."""

    def __init__(self, compute: Callable[[], tuple[dict, list[bytes]]]) -> None:
        self.compute = compute


class Server:
    """Serves one model to any number of local clients.

    Args:
        model: a ``motionode.generate.MotionModel``, or any object with its
            ``skeleton``, ``spec.units_to_m``, ``sources()`` and ``open()``.
        control: endpoint of the request socket; port 0 picks a free port.
        stream: endpoint of the publishing socket; port 0 picks a free port.
        lease: seconds without any request from a stream's client after which the
            stream is closed.
        max_streams: open streams allowed at once, over all clients.
        max_streams_per_client: open streams one connection may hold, so one
            client cannot take every stream from the others.
        keys: CURVE keys (see ``bridge.security``): both sockets encrypt, and
            only clients holding an allowed key can connect. Needed to bind a
            host other than 127.0.0.1, unless ``insecure``.
        insecure: allow binding a host other than 127.0.0.1 without CURVE.
        context: ZeroMQ context to use; by default the server makes its own.

    Raises:
        ValueError: a bad endpoint or limit.
    """

    def __init__(
        self,
        model: Any,
        control: str = "tcp://127.0.0.1:0",
        stream: str = "tcp://127.0.0.1:0",
        *,
        lease: float = 30.0,
        max_streams: int = 64,
        max_streams_per_client: int = 16,
        keys: ServerKeys | None = None,
        insecure: bool = False,
        context: zmq.Context | None = None,
    ) -> None:
        if not (lease > 0 and math.isfinite(lease)):
            raise ValueError(
                f"lease: expected a positive number of seconds, got {lease!r}"
            )
        if max_streams < 1:
            raise ValueError(f"max_streams: expected at least 1, got {max_streams!r}")
        self.model = model
        self.lease = float(lease)
        self.max_streams = int(max_streams)
        if max_streams_per_client < 1:
            raise ValueError(
                "max_streams_per_client: expected at least 1, "
                f"got {max_streams_per_client!r}"
            )
        self.max_streams_per_client = int(max_streams_per_client)
        self._bind = (
            check_endpoint("control", control, keys is not None, insecure),
            check_endpoint("stream", stream, keys is not None, insecure),
        )
        self.keys = keys
        self._auth: ThreadAuthenticator | None = None
        self._context = context
        self._own_context = context is None
        self.control_endpoint: str | None = None
        self.stream_endpoint: str | None = None

        self._skeleton = proto.describe_skeleton(model.skeleton, model.spec.units_to_m)
        self._instance = secrets.token_hex(8)
        # Ids start at random so a subscriber left over from an earlier server run
        # is unlikely to match a new stream's topic.
        self._next_id = secrets.randbelow(2**31) + 1
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        # Subscriptions in force on the stream socket, with how many hold each; a
        # stream opened later than a matching subscription starts on it.
        self._prefixes: Counter[bytes] = Counter()
        self._bad_input = _LogBudget(BAD_INPUT_LOGS)
        self._solver = Solver(self._open_streams, self._wake_stream, self._stopping)
        self._waker: zmq.Socket | None = None  # solver -> stream thread, "frames"
        self._done_waker: zmq.Socket | None = None  # worker -> control, "replies"
        self._waker_lock = threading.Lock()
        # Requests answered by the worker thread: queued jobs, finished replies,
        # and the request id in flight per client (a retry of it waits for it).
        self._jobs: queue.Queue = queue.Queue()
        self._done: deque = deque()
        self._in_flight: dict[bytes, Any] = {}
        # per (convention, rotations), made on first use
        self._maps: dict[tuple[str, str], ChannelMap] = {}
        self._replies: OrderedDict[bytes, tuple[Any, list[bytes]]] = OrderedDict()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind both sockets and serve from two background threads."""
        if self._threads or self._stopping.is_set():
            raise RuntimeError("start: a server starts once; make a new Server")
        if self._context is None:
            self._context = zmq.Context()
        router = self._context.socket(zmq.ROUTER)
        xpub = self._context.socket(zmq.XPUB)
        router.linger = 0
        router.setsockopt(zmq.MAXMSGSIZE, proto.MAX_REQUEST_BYTES)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client keeps its id
        xpub.setsockopt(zmq.XPUB_MANUAL, 1)  # see _read_subscriptions
        for socket in (router, xpub):
            socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
            socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        xpub.setsockopt(zmq.MAXMSGSIZE, 1024)
        # Frames a late stream catches up with leave in bursts; ZeroMQ's default
        # queue of 1000 messages per subscriber would drop some of them (this is
        # at most about 60 MB for a subscriber that stops reading).
        xpub.setsockopt(zmq.SNDHWM, XPUB_QUEUE)
        try:
            if self.keys is not None:
                # The authenticator must run before a peer can connect, or ZeroMQ
                # admits any client that knows the server's public key.
                self._auth = self.keys.start_authenticator(self._context)
                self.keys.secure(router)
                self.keys.secure(xpub)
            router.bind(self._bind[0])
            xpub.bind(self._bind[1])
        except zmq.ZMQError:
            router.close()
            xpub.close()
            self._stop_authenticator()
            raise
        # The worker wakes the control thread when a deferred reply is ready.
        done = self._context.socket(zmq.PULL)
        done.linger = 0
        done.bind(f"inproc://motionode-done-{self._instance}")
        self._done_waker = self._context.socket(zmq.PUSH)
        self._done_waker.linger = 0
        self._done_waker.sndhwm = 1
        self._done_waker.connect(f"inproc://motionode-done-{self._instance}")
        # The solver wakes the stream thread when it has queued frames.
        wake = self._context.socket(zmq.PULL)
        wake.linger = 0
        address = f"inproc://motionode-wake-{self._instance}"
        wake.bind(address)
        self._waker = self._context.socket(zmq.PUSH)
        self._waker.linger = 0
        self._waker.sndhwm = 1
        self._waker.connect(address)
        self.control_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stream_endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        logger.info("control socket bound at %s", self.control_endpoint)
        logger.info("stream socket bound at %s", self.stream_endpoint)
        if self.keys is not None:
            logger.info(
                "CURVE on: %d allowed client keys; server public key %s",
                len(self.keys.allowed),
                self.keys.public.decode(),
            )

        self._threads = [
            threading.Thread(
                target=self._control_loop,
                args=(router, done),
                name="bridge-control",
                daemon=True,
            ),
            threading.Thread(target=self._work_loop, name="bridge-work", daemon=True),
            threading.Thread(
                target=self._stream_loop,
                args=(xpub, wake),
                name="bridge-stream",
                daemon=True,
            ),
            threading.Thread(
                target=self._solver.run, name="bridge-solver", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End every stream, close both sockets and join the threads; calling it
        again does nothing."""
        if self._stopping.is_set() and not self._threads:
            return
        self._stopping.set()
        stuck = False
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.error("%s did not stop within %.1f s", thread.name, timeout)
                stuck = True
        self._threads = []
        if not stuck:
            with self._waker_lock:
                for waker in (self._waker, self._done_waker):
                    if waker is not None:
                        waker.close()
                self._waker = self._done_waker = None
        self._stop_authenticator()
        if self._own_context and self._context is not None and not stuck:
            self._context.term()
        logger.info("server stopped")

    def _stop_authenticator(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def serve_forever(self) -> None:
        """Start, then block until :meth:`stop` is called or Ctrl-C is pressed."""
        self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ control thread

    def _control_loop(self, router: zmq.Socket, done: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(done, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                try:
                    events = dict(poller.poll(int(IDLE_POLL * 1000)))
                    if done in events:
                        while done.poll(0):
                            done.recv()
                        self._send_done(router)
                    if router in events:
                        self._answer(router, router.recv_multipart())
                except Exception:
                    logger.exception("control: unexpected failure; carrying on")
        finally:
            router.close()
            done.close()

    def _answer(self, router: zmq.Socket, parts: list[bytes]) -> None:
        """Answer one request; ``parts`` is [routing id, (empty delimiter,) body]."""
        owner = parts[0]
        # REQ peers put an empty delimiter frame before the body; DEALER peers may not.
        split = 2 if len(parts) > 2 and parts[1] == b"" else 1
        envelope, body = parts[:split], parts[split:]
        self._touch(owner)

        request = None
        try:
            if len(body) != 1:
                raise ProtocolError(
                    "bad_frames",
                    f"expected 1 frame after the routing id, got {len(body)}",
                )
            request = proto.decode_request(body[0])
            cached = self._replies.get(owner)
            if request.retry and self._in_flight.get(owner) == request.id:
                logger.debug(
                    "control: %r repeated by %s while it is being computed",
                    request.id,
                    proto.short_repr(owner),
                )
                return  # its reply follows when the worker is done
            if request.retry and cached is not None and cached[0] == request.id:
                logger.debug(
                    "control: %r repeated by %s; sending the stored reply",
                    request.id,
                    proto.short_repr(owner),
                )
                reply = cached[1]
            else:
                reply = self._dispatch(owner, request)
                if isinstance(reply, _Later):
                    self._in_flight[owner] = request.id
                    self._jobs.put((envelope, owner, request, reply))
                    return
        except ProtocolError as exc:
            if request is None and self._bad_input.allow():
                logger.error(
                    "control: malformed request from %s: %s; frames: %s",
                    proto.short_repr(owner),
                    exc,
                    [proto.short_repr(p) for p in body[:3]],
                )
            if request is None:
                reply = [proto.encode_error(exc.request_id, exc.code, exc.message)]
            else:
                if self._bad_input.allow():
                    logger.warning(
                        "control: %s %r refused: %s", request.op, request.id, exc
                    )
                reply = [proto.encode_error(request.id, exc.code, exc.message)]
        except Exception:
            logger.exception("control: %s failed", request.op if request else "request")
            reply = [
                proto.encode_error(
                    request.id if request else None,
                    "internal",
                    "the server failed to answer; see its log",
                )
            ]

        self._reply(router, envelope, owner, request, reply)

    def _reply(
        self,
        router: zmq.Socket,
        envelope: list[bytes],
        owner: bytes,
        request: proto.Request | None,
        reply: list[bytes],
    ) -> None:
        """Send a reply, and keep it for a retry of its request."""
        if request is not None:
            self._replies[owner] = (request.id, reply)
            self._replies.move_to_end(owner)
            while len(self._replies) > REPLY_CACHE:
                self._replies.popitem(last=False)
        router.send_multipart(envelope + reply)

    def _work_loop(self) -> None:
        """Compute deferred replies (pulls) one at a time, off the control thread."""
        while not self._stopping.is_set():
            try:
                envelope, owner, request, later = self._jobs.get(timeout=IDLE_POLL)
            except queue.Empty:
                continue
            try:
                fields, extra = later.compute()
                reply = [proto.encode_reply(request.id, **fields), *extra]
            except ProtocolError as exc:
                reply = [proto.encode_error(request.id, exc.code, exc.message)]
            except Exception:
                logger.exception("control: %s failed", request.op)
                reply = [
                    proto.encode_error(
                        request.id,
                        "internal",
                        "the server failed to answer; see its log",
                    )
                ]
            self._done.append((envelope, owner, request, reply))
            self._wake("_done_waker")

    def _send_done(self, router: zmq.Socket) -> None:
        """Send the replies the worker has finished."""
        while self._done:
            envelope, owner, request, reply = self._done.popleft()
            if self._in_flight.get(owner) == request.id:
                del self._in_flight[owner]
            self._reply(router, envelope, owner, request, reply)

    def _touch(self, owner: bytes) -> None:
        """Renew the lease of every stream ``owner`` opened."""
        now = time.monotonic()
        with self._lock:
            for stream in self._streams.values():
                if stream.owner == owner:
                    stream.last_seen = now

    def _dispatch(self, owner: bytes, request: proto.Request) -> list[bytes] | _Later:
        result = getattr(self, f"_op_{request.op}")(owner, **request.params)
        if isinstance(result, _Later):
            return result
        fields, extra = result if isinstance(result, tuple) else (result, [])
        logger.debug(
            "control: %s %r from %s", request.op, request.id, proto.short_repr(owner)
        )
        return [proto.encode_reply(request.id, **fields), *extra]

    def _live(
        self, stream_id: int, modes: tuple[str, ...] = (), need: str = ""
    ) -> _Stream:
        """An open stream; with ``modes``, one of those modes, else ``wrong_mode``
        saying ``need``."""
        with self._lock:
            stream = self._streams.get(stream_id)
        if stream is None or stream.end is not None:
            raise ProtocolError("unknown_stream", f"stream: no open stream {stream_id}")
        if modes and stream.mode not in modes:
            raise ProtocolError(
                "wrong_mode", f"stream: {stream_id} is a {stream.mode} stream; {need}"
            )
        return stream

    def _op_hello(self, owner: bytes) -> dict:
        meta = getattr(self.model, "metadata", None) or {}
        return {
            "server": "motionode",
            "protocol": proto.VERSION,
            "instance": self._instance,
            "stream_endpoint": self.stream_endpoint,
            "clock": time.monotonic(),
            "model": {
                "joints": len(self._skeleton["names"]),
                "channels": self._skeleton["num_channels"],
                "units_to_m": self._skeleton["units_to_m"],
                "up_axis": "Y",
                "licence": meta.get("licence"),
                "step": meta.get("step"),
                "fingerprint": self._fingerprint(),
            },
            "sources": self.model.sources(),
            "limits": {
                "max_fps": proto.MAX_FPS,
                "max_pull_times": proto.MAX_PULL_TIMES,
                "max_streams": self.max_streams,
                "max_streams_per_client": self.max_streams_per_client,
                "max_request_bytes": proto.MAX_REQUEST_BYTES,
                "lease": self.lease,
                "max_speed": proto.MAX_SPEED,
                "max_window": proto.MAX_WINDOW,
                "max_blend": proto.MAX_BLEND,
                "max_snapshot_bytes": proto.MAX_SNAPSHOT_BYTES,
            },
        }

    def _fingerprint(self) -> str | None:
        """The model's fingerprint, or None for a model without snapshots."""
        fingerprint = getattr(self.model, "fingerprint", None)
        return fingerprint() if callable(fingerprint) else None

    def _op_skeleton(self, owner: bytes, convention: str, rotations: str) -> dict:
        return {"skeleton": self._channel_map(convention, rotations).skeleton}

    def _op_sources(self, owner: bytes) -> dict:
        return {"sources": self.model.sources()}

    def _op_ping(self, owner: bytes) -> dict:
        return {"clock": time.monotonic()}

    def _model_source(self, source: str | dict, seed: int) -> str | list:
        """A request's source as the model takes it: a name, or (source, seed,
        weight) components, a component's seed defaulting to ``seed``."""
        sources = self.model.sources()
        names = (
            [source]
            if isinstance(source, str)
            else [part["source"] for part in source["blend"]]
        )
        for name in names:
            if name not in sources:
                raise ProtocolError(
                    "unknown_source", f"source: unknown {name!r}; known: {sources}"
                )
        if isinstance(source, str):
            return source
        return [
            (
                part["source"],
                seed if part["seed"] is None else part["seed"],
                part["weight"],
            )
            for part in source["blend"]
        ]

    @staticmethod
    def _echo_source(source: str | list) -> str | dict:
        """A model source as replies show it: seeds filled in."""
        if isinstance(source, str):
            return source
        return {"blend": [{"source": n, "seed": s, "weight": w} for n, s, w in source]}

    def _op_open(
        self,
        owner: bytes,
        source: str | dict,
        seed: int,
        start: float,
        mode: str,
        velocities: bool,
        fps: float | None = None,
        convention: str = "raw",
        rotations: str = "euler",
        window: int = proto.DEFAULT_WINDOW,
        snapshot: dict | None = None,
        first_seq: int | None = None,
    ) -> dict:
        restored = None
        if snapshot is not None:
            restored = self._restore(snapshot, fps, start, first_seq)
            poses, timeline, start, first_seq = restored
            source = (
                poses.source
                if len(poses.components) == 1 and not poses.source.startswith("blend(")
                else list(poses.components)
            )
            seed = poses.seed
        else:
            source = self._model_source(source, seed)
        with self._lock:
            live = sum(s.end is None for s in self._streams.values())
            mine = sum(
                s.end is None and s.owner == owner for s in self._streams.values()
            )
        if mine >= self.max_streams_per_client:
            raise ProtocolError(
                "too_many_streams",
                f"this connection holds {mine} open streams, the most one client "
                f"may hold ({self.max_streams_per_client}); close one first",
            )
        if live >= self.max_streams:
            raise ProtocolError(
                "too_many_streams",
                f"{live} streams are open, the most this server allows "
                f"({self.max_streams})",
            )
        if restored is not None:
            # Solve from the snapshot's segment to the first frame here, as below.
            poses.channels_at(
                timeline.motion(start + first_seq / fps), continuous=False
            )
        else:
            poses = self.model.open(source=source, seed=seed)
        if restored is None and mode != "pull" and start > 0:
            # Solve up to the first frame here, not on the stream thread, where it
            # would hold back every other push stream (up to seconds for 60 s).
            poses.channels_at(np.array([start]), continuous=False)

        convert = self._channel_map(convention, rotations)
        stream_id = self._next_id
        self._next_id = self._next_id % proto.MAX_STREAM_ID + 1
        fields = {
            "stream": stream_id,
            "topic": proto.topic(stream_id).decode(),
            "mode": mode,
            "source": self._echo_source(source),
            "seed": seed,
            "fps": fps if mode != "pull" else None,
            "start": start,
            "num_channels": convert.width,
            "velocities": velocities,
            "convention": convention,
            "rotations": rotations,
        }
        if mode == "record":
            fields["window"] = window
        if restored is not None:
            fields["first_seq"] = first_seq
        info = json.dumps(
            {**fields, "skeleton": convert.skeleton}, separators=(",", ":")
        ).encode()
        stream = _Stream(
            stream_id,
            owner,
            mode,
            fields["fps"],
            start,
            poses,
            info,
            convert,
            time.monotonic(),
        )
        stream.velocities = velocities
        stream.fields = fields
        if mode == "record":
            stream.window = stream.allowed = window
        if restored is not None:
            stream.timeline = timeline
            stream.first_seq = stream.next_seq = stream.computed_to = first_seq
            stream.allowed += first_seq
        with self._lock:
            self._streams[stream_id] = stream
        logger.info(
            "stream %d opened by %s: %s, seed %d, %s%s",
            stream_id,
            proto.short_repr(owner),
            proto.short_repr(source),
            seed,
            mode,
            f" at {fps:g} fps" if mode != "pull" else "",
        )
        return fields

    def _restore(
        self, snapshot: dict, fps: float, start: float | None, first_seq: int | None
    ) -> tuple[PoseStream, Timeline, float, int]:
        """The pose generator, timeline, start and first frame of a stream opened
        from a snapshot (checked by ``protocol``'s ``_stream_snapshot``)."""
        if self._fingerprint() is None:
            raise ProtocolError(
                "bad_request", "snapshot: this server's model does not take snapshots"
            )
        fps_then = float.fromhex(snapshot["fps"])
        start_then = float.fromhex(snapshot["start"])
        if fps != fps_then:
            raise ProtocolError(
                "bad_snapshot",
                f"fps: {fps!r} differs from the snapshot's {fps_then!r}; frame "
                "times would differ",
            )
        if start is not None and start != start_then:
            raise ProtocolError(
                "bad_snapshot",
                f"start: {start!r} differs from the snapshot's {start_then!r}; "
                "frame times would differ",
            )
        seq = snapshot["seq"]
        first = seq if first_seq is None else first_seq
        if first < seq:
            raise ProtocolError(
                "bad_request",
                f"first_seq: {first} is before the snapshot's frame {seq}",
            )
        try:
            timeline = Timeline.restore(snapshot["timeline"], "snapshot.timeline")
            poses = PoseStream.restore(self.model, snapshot["poses"], "snapshot.poses")
        except SnapshotError as exc:
            raise ProtocolError("bad_snapshot", str(exc)) from None
        then = start_then + seq / fps
        if then < timeline.first:
            raise ProtocolError(
                "bad_snapshot",
                f"snapshot.timeline: starts at {timeline.first!r} s, after frame "
                f"{seq} ({then!r} s)",
            )
        origin = poses.origin / poses.rate
        motion = float(timeline.motion(then)[0])
        if math.floor(motion * poses.rate + 1e-9) < poses.origin:
            raise ProtocolError(
                "bad_snapshot",
                f"snapshot.seq: frame {seq} plays motion time {motion!r} s, before "
                f"the snapshot's segment ({origin!r} s)",
            )
        reach = float(timeline.motion(start_then + first / fps)[0]) - origin
        if reach > proto.MAX_PULL_AHEAD:
            raise ProtocolError(
                "bad_request",
                f"first_seq: frame {first} is {reach:g} s of motion past the "
                f"snapshot, over {proto.MAX_PULL_AHEAD:g} s; take a later snapshot",
            )
        if timeline.speed / fps > proto.MAX_FRAME_MOTION:
            raise ProtocolError(
                "bad_snapshot",
                f"snapshot.timeline: speed {timeline.speed:g} at {fps:g} fps is "
                f"over {proto.MAX_FRAME_MOTION:g} s of motion between frames",
            )
        return poses, timeline, start_then, first

    def _channel_map(self, convention: str, rotations: str = "euler") -> ChannelMap:
        key = (convention, rotations)
        if key not in self._maps:
            sk = self.model.skeleton
            self._maps[key] = channel_map(
                sk, self.model.spec.units_to_m, convention, rotations
            )
        return self._maps[key]

    def _op_pull(
        self, owner: bytes, stream: int, times: list[float], continuous: bool
    ) -> tuple[dict, list[bytes]]:
        target = self._live(
            stream, ("pull",), "open one with mode 'pull' to pull poses"
        )
        target.last_seen = time.monotonic()
        times = np.asarray(times, dtype=np.float64)  # (T,)
        with target.lock:
            motion = target.timeline.motion(times)  # (T,)
            # Poses are solved forward from 0: a far jump would hold the control
            # thread for minutes, so a pull reaches only so far past the latest
            # time asked (in motion time: fast playback costs more).
            reach = target.timeline.motion(target.frontier)[0] + proto.MAX_PULL_AHEAD
            if motion.max() > reach:
                raise ProtocolError(
                    "bad_request",
                    f"times: {times.max():g} s is more than "
                    f"{proto.MAX_PULL_AHEAD:g} s of motion past this stream's "
                    f"latest time ({target.frontier:g} s); step forward in "
                    "smaller jumps",
                )
            target.frontier = max(target.frontier, float(times.max()))

        def compute() -> tuple[dict, list[bytes]]:
            with target.lock:
                rows = target.rows(times, continuous)  # (T, C) or (T, 2C)
            values = np.ascontiguousarray(rows, dtype="<f4")  # (T, C) or (T, 2C)
            fields = {
                "stream": stream,
                "count": values.shape[0],
                "channels": target.convert.width,
                "dtype": "<f4",
                "velocities": target.velocities,
            }
            return fields, [values.tobytes()]

        # Solving can take a second: a worker does it, and other clients' requests
        # are answered meanwhile.
        return _Later(compute)

    def _op_streams(self, owner: bytes) -> dict:
        """This connection's open streams, each as its open reply described it,
        so a client that reconnects with its routing id can take them up again."""
        with self._lock:
            mine = [
                s.fields
                for s in self._streams.values()
                if s.owner == owner and s.end is None
            ]
        return {"streams": mine}

    def _op_close(self, owner: bytes, stream: int) -> dict:
        self._live(stream).end = "closed"
        return {"stream": stream}

    def _op_switch(
        self, owner: bytes, stream: int, source: str | dict, seed: int
    ) -> dict:
        target = self._live(stream)
        source = self._model_source(source, seed)
        with target.lock:
            # Frames computed ahead stay: a switch starts after every time asked.
            after = target.timeline.motion(target.control_time())[0]
            try:
                motion = target.poses.switch(source, seed, float(after))
            except ValueError as exc:
                raise ProtocolError("bad_request", str(exc)) from None
            at = target.timeline.stream_time(motion)
        logger.info(
            "stream %d: switching to %s, seed %d, at motion time %.4f s",
            stream,
            proto.short_repr(source),
            seed,
            motion,
        )
        return {
            "stream": stream,
            "source": self._echo_source(source),
            "seed": seed,
            "at": at,
            "motion_time": motion,
        }

    def _op_snapshot(self, owner: bytes, stream: int, seq: int | None = None) -> dict:
        """What a restarted server needs to continue a push stream or recording
        exactly from frame ``seq`` (default: the next one to send) on."""
        target = self._live(
            stream,
            ("push", "record"),
            "only push streams and recordings have snapshots",
        )
        if not hasattr(target.poses, "snapshot"):
            raise ProtocolError(
                "bad_request", "snapshot: this server's model does not take snapshots"
            )
        with target.lock:
            sent = target.next_seq
            seq = sent if seq is None else seq
            if not target.first_seq <= seq <= sent:
                raise ProtocolError(
                    "bad_request",
                    f"seq: expected a frame from {target.first_seq} (the stream's "
                    f"first) to {sent} (the next to be sent), got {seq}",
                )
            t = float(target.time_of(seq))
            if t < target.timeline.first:
                raise ProtocolError(
                    "bad_request",
                    f"seq: frame {seq} is older than the speed history kept (from "
                    f"{target.timeline.first:g} s); ask for a later frame",
                )
            motion = float(target.timeline.motion(t)[0])
            body = {
                "format": proto.STREAM_SNAPSHOT_FORMAT,
                "fps": float(target.fps).hex(),
                "start": float(target.start).hex(),
                "seq": seq,
                "timeline": target.timeline.snapshot(t),
                "poses": target.poses.snapshot(motion),
            }
        size = len(json.dumps(body, separators=(",", ":")))
        if size > proto.MAX_SNAPSHOT_BYTES:
            raise ProtocolError(
                "bad_request",
                f"snapshot: {size} bytes, over {proto.MAX_SNAPSHOT_BYTES}: too many "
                f"switches or speed changes after frame {seq}; ask for a later frame",
            )
        logger.debug("stream %d: snapshot at frame %d, %d bytes", stream, seq, size)
        return {"stream": stream, "seq": seq, "t": t, "bytes": size, "snapshot": body}

    def _op_ack(self, owner: bytes, stream: int, received: int) -> dict:
        target = self._live(
            stream, ("record",), "only a 'record' stream takes acknowledgements"
        )
        if received > target.next_seq:
            raise ProtocolError(
                "bad_request",
                f"received: {received} frames, but only {target.next_seq} were sent",
            )
        # Acknowledgements may arrive out of order (retries): never shrink.
        target.allowed = max(target.allowed, received + target.window)
        self._solver.poke()
        return {"stream": stream, "received": received, "allowed": target.allowed}

    def _op_speed(self, owner: bytes, stream: int, speed: float) -> dict:
        target = self._live(stream)
        if target.mode != "pull" and speed / target.fps > proto.MAX_FRAME_MOTION:
            raise ProtocolError(
                "bad_request",
                f"speed: {speed:g} at {target.fps:g} fps puts "
                f"{speed / target.fps:g} s of motion between frames, over "
                f"{proto.MAX_FRAME_MOTION:g} s; raise fps or lower speed",
            )
        with target.lock, target.send_lock:
            target.drop_computed()
            at = target.control_time()
            motion = target.timeline.set_speed(at, speed)
            if target.mode != "pull":
                # Push frames never look back; snapshots look back a little.
                target.timeline.forget_before(at - TIMELINE_KEEP_S)
        self._solver.poke()
        logger.info("stream %d: speed %g from stream time %.4f s", stream, speed, at)
        return {"stream": stream, "speed": speed, "at": at, "motion_time": motion}

    # ------------------------------------------------------------ stream thread

    def _open_streams(self) -> list[_Stream]:
        with self._lock:
            return list(self._streams.values())

    def _wake_stream(self) -> None:
        """Called by the solver: frames were queued."""
        self._wake("_waker")

    def _wake(self, name: str) -> None:
        """Wake the thread listening on the other end of waker ``name``."""
        with self._waker_lock:
            waker = getattr(self, name)
            if waker is not None:
                try:
                    waker.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # a wake-up is already waiting

    def _stream_loop(self, xpub: zmq.Socket, wake: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(xpub, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                try:
                    wait = self._publish_due(xpub)
                    # ZeroMQ waits whole milliseconds: wait the rest in a sleep, so
                    # frames leave within a fraction of a millisecond of their time.
                    events = dict(poller.poll(math.floor(wait * 1000)))
                    if not events and wait % 0.001 > 0:
                        time.sleep(wait % 0.001)
                    if xpub in events:
                        self._read_subscriptions(xpub)
                    if wake in events:
                        while wake.poll(0):
                            wake.recv()
                except Exception:
                    logger.exception("stream: unexpected failure; carrying on")
                    time.sleep(IDLE_POLL)
            for stream in self._open_streams():
                stream.end = stream.end or "server_stopped"
                self._finish(xpub, stream)
        finally:
            xpub.close(linger=XPUB_LINGER_MS)
            wake.close()

    def _publish_due(self, xpub: zmq.Socket) -> float:
        """Publish every computed frame that is due (a recording's at once), end
        finished streams; return how long to sleep until the next falls due."""
        now = time.monotonic()
        wake = now + IDLE_POLL
        for stream in self._open_streams():
            if self._stopping.is_set():
                break  # the loop ends every stream next
            if stream.end is None and now - stream.last_seen > self.lease:
                stream.end = "expired"
                logger.info(
                    "stream %d expired: no request from its client for %.1f s",
                    stream.id,
                    now - stream.last_seen,
                )
            if stream.end is not None:
                self._finish(xpub, stream)
                continue
            if (
                stream.clock0 is None
                and stream.mode != "pull"
                and any(proto.topic(stream.id).startswith(p) for p in +self._prefixes)
            ):
                # Subscribed before it was opened (an empty or prefix subscription).
                self._send_skeleton(xpub, stream)
            if stream.clock0 is None:  # a pull stream, or no subscriber yet
                continue
            self._send_frames(xpub, stream, now)
            if stream.mode == "push":
                due = stream.due(stream.next_seq)
                self._check_late(stream, time.monotonic() - due)
                if stream.ahead:
                    wake = min(wake, due)
            elif stream.ahead:  # a recording's frames beyond this pass's batch
                wake = now
        return max(0.0, wake - time.monotonic())

    def _send_frames(self, xpub: zmq.Socket, stream: _Stream, now: float) -> None:
        """Publish a stream's computed frames that are due at ``now`` (server
        clock), at most MAX_BATCH; a recording's regardless of the clock."""
        count, first = 0, stream.next_seq
        half = stream.convert.width
        with stream.send_lock:
            ahead = stream.ahead
            while ahead and count < MAX_BATCH:
                seq, row = ahead[0]
                if stream.mode == "push" and stream.due(seq) > now:
                    break
                ahead.popleft()
                # Counted as sent before it leaves: a client that has it may ask
                # for a snapshot of the next one at once.
                stream.next_seq = seq + 1
                message = proto.encode_frame(
                    stream.id,
                    seq,
                    float(stream.time_of(seq)),
                    time.monotonic(),
                    row[:half],
                    row[half:] if stream.velocities else None,
                )
                xpub.send(message, zmq.NOBLOCK)
                count += 1
        if count:
            logger.debug(
                "stream %d: frames %d-%d sent", stream.id, first, first + count - 1
            )

    def _check_late(self, stream: _Stream, lateness: float) -> None:
        if lateness > LATE_WARNING and not stream.late:
            logger.warning(
                "stream %d is %.1f s behind the clock at %g fps; every "
                "frame is still sent, late",
                stream.id,
                lateness,
                stream.fps,
            )
        stream.late = lateness > LATE_WARNING

    def _finish(self, xpub: zmq.Socket, stream: _Stream) -> None:
        """Publish a started stream's end message and forget the stream."""
        if stream.clock0 is not None:
            xpub.send(
                proto.encode_end(
                    stream.id,
                    stream.next_seq,
                    stream.time_of(stream.next_seq),
                    time.monotonic(),
                    stream.end,
                ),
                zmq.NOBLOCK,
            )
        with self._lock:
            self._streams.pop(stream.id, None)
        logger.info(
            "stream %d ended (%s) after %d frames",
            stream.id,
            stream.end,
            stream.next_seq,
        )

    def _read_subscriptions(self, xpub: zmq.Socket) -> None:
        """Apply each (un)subscription, and send the skeleton to new subscribers.

        The socket is in manual mode: a subscription takes effect only when it is
        applied here, right before the skeleton message is sent, so no frame can
        reach a new subscriber ahead of its skeleton.
        """
        while True:
            try:
                message = xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            # b"\x01" + b"0000002a|" subscribes to stream 42; b"\x00" + ... leaves.
            if not message or message[0] not in (0, 1):
                if self._bad_input.allow():
                    logger.error(
                        "stream: expected a subscription message, got %s",
                        proto.short_repr(message),
                    )
                continue
            prefix = message[1:]
            if message[0] == 0:
                xpub.setsockopt(zmq.UNSUBSCRIBE, prefix)
                self._prefixes[prefix] -= 1
                logger.debug("stream: unsubscribed from %r", prefix)
                continue
            xpub.setsockopt(zmq.SUBSCRIBE, prefix)
            self._prefixes[prefix] += 1
            with self._lock:
                matches = [
                    s
                    for s in self._streams.values()
                    if s.mode != "pull"
                    and s.end is None
                    and proto.topic(s.id).startswith(prefix)
                ]
            for stream in matches:
                self._send_skeleton(xpub, stream)

    def _send_skeleton(self, xpub: zmq.Socket, stream: _Stream) -> None:
        now = time.monotonic()
        xpub.send(
            proto.encode_skeleton(
                stream.id,
                stream.next_seq,
                stream.time_of(stream.next_seq),
                now,
                stream.info,
            ),
            zmq.NOBLOCK,
        )
        if stream.clock0 is None:
            stream.clock0 = now
            self._solver.poke()
            logger.info(
                "stream %d: first subscriber; publishing at %g fps",
                stream.id,
                stream.fps,
            )
        else:
            logger.debug("stream %d: new subscriber; skeleton sent again", stream.id)
