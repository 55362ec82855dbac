"""A connection to one motionode server, run on a background thread.

The thread owns a ZeroMQ DEALER socket and does every network wait, so Blender's
main thread never blocks: it hands over the stream times it wants with
:meth:`Link.want` and collects what came back with :meth:`Link.events`.

The thread opens one ``pull`` stream (PROTOCOL.md, section 2) and asks it for
exactly the times wanted, in batches. Requests follow the protocol's retry rule: a
request without a reply within ``timeout`` is sent again, marked as a retry, on a
fresh socket with the same routing id. When every attempt fails, the link reports
itself lost and keeps trying to say ``hello`` again; once a server answers it opens
a new stream, so a server restarted on the same endpoint is picked up by itself.
While idle it pings, which renews the stream's lease and notices a lost server.

``zmq`` (pyzmq) is imported here; check it is available before importing this
module (see ``deps``).
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.auth
import zmq.utils.monitor

from . import wire
from .wire import ProtocolError, SkeletonDesc

logger = logging.getLogger(__name__)

__all__ = ["CurveKeys", "Hello", "Link", "Poses", "Status", "check_endpoint"]

POLL_S = 0.05  # longest wait between checks of the stop flag and of new wants
HEARTBEAT_S = 2.0  # ping this often when idle: renews the lease, notices a loss
RETRY_PAUSE_S = 1.0  # wait between reconnection attempts
GOODBYE_S = 0.1  # time the last close request gets to leave when the link stops
# Handshakes that failed: our CURVE key refused (AUTH), CURVE on one side only
# (PROTOCOL), or a wrong server key (NO_DETAIL).
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass(frozen=True)
class CurveKeys:
    """CURVE keys, 40 Z85 characters each: the server's public key and this
    client's key pair."""

    server: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_key: str, secret_file: str) -> CurveKeys:
        """The server's public key (Z85 text or its ``.key`` file) and this
        client's ``.key_secret`` file, both as ``motionode keys`` writes them.

        Raises:
            ValueError: a missing or unreadable key or file, named.
        """
        server_key, secret_file = server_key.strip(), secret_file.strip()
        if not (server_key and secret_file):
            raise ValueError(
                "CURVE: give both the server key and this client's secret key file"
            )
        server = (
            server_key.encode()
            if len(server_key) == 40 and not os.path.exists(server_key)
            else _certificate(server_key, secret=False)[0]
        )
        public, secret = _certificate(secret_file, secret=True)
        return cls(server, public, secret)

    def secure(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.server
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


def _certificate(path: str, secret: bool) -> tuple[bytes, bytes | None]:
    path = os.path.abspath(os.path.expanduser(path))
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable ZeroMQ key file ({exc})") from None
    if public is None or (secret and secret_key is None):
        what = "a secret key (the .key_secret file)" if secret else "a public key"
        raise ValueError(f"{path}: holds no {what}")
    return public, secret_key


@dataclass(frozen=True)
class Status:
    """The link's state changed: "connecting", "connected", "lost", "error" (the
    server refused the settings; fix them and reconnect) or "closed"."""

    state: str
    message: str


@dataclass(frozen=True)
class Hello:
    """A stream was opened. ``key`` is (server instance, source, seed): poses
    cached under another key may differ."""

    info: dict
    skeleton: SkeletonDesc
    stream: int
    generation: int
    key: tuple


@dataclass(frozen=True)
class Poses:
    """Poses of the stream opened as ``generation``: rows (T, C) float32 of
    channel values at stream times (T,) float64 seconds."""

    generation: int
    times: np.ndarray
    rows: np.ndarray


class _Lost(Exception):
    """No reply after every attempt."""


class _Stopped(Exception):
    """The link was closed while waiting."""


class _Refused(Exception):
    """The server refused the security handshake."""


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` stripped, if it has the form tcp://HOST:PORT or ipc://PATH.

    Raises:
        ValueError: any other form; the message shows an example.
    """
    text = endpoint.strip()
    scheme, sep, rest = text.partition("://")
    host, colon, port = rest.rpartition(":")
    if sep and scheme == "ipc" and rest:
        return text
    if sep and scheme == "tcp" and host and colon and port.isdigit():
        return text
    raise ValueError(
        f"endpoint: expected the server's control socket such as "
        f"'tcp://127.0.0.1:5555', got {endpoint!r}"
    )


class Link:
    """Talks to the server at ``endpoint`` from a background thread.

    Args:
        endpoint: the server's control socket, e.g. "tcp://127.0.0.1:5555".
        source: the stream's source, e.g. "prior" or "clip:<name>".
        seed: the stream's seed.
        keys: CURVE keys, for a server that uses them.
        timeout: seconds to wait for each reply.
        attempts: sends of one request before the server counts as lost.
        batch: most times asked in one pull.
    """

    def __init__(
        self,
        endpoint: str,
        source: str,
        seed: int,
        *,
        keys: CurveKeys | None = None,
        timeout: float = 2.0,
        attempts: int = 2,
        batch: int = 32,
    ) -> None:
        self.endpoint = check_endpoint(endpoint)
        self.keys = keys
        self._monitor: zmq.Socket | None = None
        self.timeout = float(timeout)
        self.attempts = int(attempts)
        self.batch = max(1, min(int(batch), wire.MAX_PULL_TIMES))
        self.routing_id = b"motionode-blender-" + secrets.token_hex(8).encode()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wanted: list[float] = []  # guarded by _lock
        self._settings = (str(source), int(seed))  # guarded by _lock
        self._settings_changed = True  # guarded by _lock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._socket: zmq.Socket | None = None
        self._context: zmq.Context | None = None
        self._next_id = 1
        self._last_sent = 0.0
        self._generation = 0
        self._stream: int | None = None  # the open stream, for the goodbye
        self._thread = threading.Thread(
            target=self._run, name="motionode-link", daemon=True
        )

    # ------------------------------------------------------------ main thread

    def start(self) -> None:
        """Start the thread; it reports "connecting" and then carries on alone."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def want(self, times: list[float]) -> None:
        """Replace the times still wanted; the first ones are asked for first."""
        with self._lock:
            self._wanted = [float(t) for t in dict.fromkeys(times)]
        self._wake.set()

    def wanted(self) -> list[float]:
        """The times wanted and not yet answered, first asked first."""
        with self._lock:
            return list(self._wanted)

    def set_stream(self, source: str, seed: int) -> None:
        """Open a stream of another source or seed in place of the current one."""
        with self._lock:
            self._settings = (str(source), int(seed))
            self._settings_changed = True
            self._wanted = []
        self._wake.set()

    def events(self) -> list[Status | Hello | Poses]:
        """Everything the thread reported since the last call, oldest first."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread; waits at most ``timeout`` seconds for it."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the network thread did not stop within %.1f s", timeout)

    # ------------------------------------------------------------ thread

    def _emit(self, event: Status | Hello | Poses) -> None:
        if isinstance(event, Status):
            logger.info("%s: %s", event.state, event.message)
        self._events.put(event)

    def _run(self) -> None:
        self._context = zmq.Context()
        try:
            self._emit(Status("connecting", f"connecting to {self.endpoint}"))
            self._socket = self._connect()
            self._serve()
        except _Stopped:
            pass
        except Exception as exc:
            logger.exception("network thread failed")
            self._emit(Status("error", f"network thread failed: {exc}"))
        finally:
            if self._socket is not None:
                # Linger a moment, so a goodbye close request can leave.
                sent = self._say_goodbye()
                self._socket.close(linger=int(GOODBYE_S * 1000) if sent else 0)
            if self._monitor is not None:
                self._monitor.close(linger=0)
            self._context.term()
            self._emit(Status("closed", "disconnected"))

    def _connect(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        socket.linger = 0
        socket.setsockopt(zmq.ROUTING_ID, self.routing_id)
        if self.keys is not None:
            self.keys.secure(socket)
        if self._monitor is not None:
            self._monitor.close(linger=0)
        self._monitor = socket.get_monitor_socket(HANDSHAKE_FAILED)
        socket.connect(self.endpoint)
        return socket

    def _check_handshake(self) -> None:
        """Raise _Refused if the socket's security handshake failed."""
        if self._monitor is None or not self._monitor.poll(0):
            return
        event = zmq.utils.monitor.recv_monitor_message(self._monitor)["event"]
        why = {
            zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused this client's "
            "CURVE key",
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the server's security differs "
            "from ours (CURVE keys on one side only?)",
        }.get(event, "wrong server key?")
        raise _Refused(f"{self.endpoint}: security handshake failed: {why}")

    def _serve(self) -> None:
        """Keep a stream open and answer wants until stopped."""
        stream: int | None = None
        lost = 0  # reconnection attempts since the link was last connected
        while not self._stop.is_set():
            try:
                with self._lock:
                    changed, self._settings_changed = self._settings_changed, False
                if changed and stream is not None:
                    self._close_quietly(stream)
                    stream = None
                if stream is None:
                    stream = self._open(quick=lost > 0)
                    lost = 0
                    continue
                times = self._next_times()
                if times:
                    self._pull(stream, times)
                elif time.monotonic() - self._last_sent > HEARTBEAT_S:
                    self._request("ping")
                else:
                    self._wake.wait(POLL_S)
                    self._wake.clear()
            except _Refused as exc:
                stream = None
                self._emit(Status("error", f"{exc}; check the CURVE keys"))
                self._wait_for_settings()
            except _Lost as exc:
                stream = None
                lost += 1
                self._emit(Status("lost", f"{exc}; retrying"))
                self._pause(RETRY_PAUSE_S)
            except ProtocolError as exc:
                stream = None
                if exc.code == "unknown_stream":
                    # A lease that ran out, or a server restarted between two
                    # requests: open the stream again.
                    logger.info("reopening the stream after %s", exc)
                elif exc.code == "internal":
                    self._emit(Status("lost", f"the server failed: {exc.message}"))
                    self._pause(RETRY_PAUSE_S)
                else:
                    self._emit(Status("error", f"the server refused: {exc}"))
                    self._wait_for_settings()
            finally:
                self._stream = stream

    def _open(self, quick: bool) -> int:
        """Say hello, read the skeleton and open a pull stream; returns its id."""
        with self._lock:
            source, seed = self._settings
        attempts = 1 if quick else self.attempts
        hello, _ = self._request("hello", attempts=attempts)
        if hello.get("server") != "motionode" or hello.get("protocol") != wire.VERSION:
            raise ProtocolError(
                "bad_reply",
                f"expected a motionode server speaking protocol {wire.VERSION}, got "
                f"server {hello.get('server')!r}, protocol {hello.get('protocol')!r}",
            )
        reply, _ = self._request("skeleton")
        skeleton = SkeletonDesc.from_json(reply.get("skeleton"))
        opened, _ = self._request("open", source=source, seed=seed, mode="pull")
        self._generation += 1
        key = (hello.get("instance"), source, seed)
        self._emit(Hello(hello, skeleton, opened["stream"], self._generation, key))
        self._emit(
            Status(
                "connected",
                f"{source}, seed {seed}: {skeleton.num_joints} joints from "
                f"{self.endpoint}",
            )
        )
        return int(opened["stream"])

    def _next_times(self) -> list[float]:
        with self._lock:
            return self._wanted[: self.batch]

    def _pull(self, stream: int, times: list[float]) -> None:
        generation = self._generation
        reply, extra = self._request(
            "pull", stream=stream, times=times, continuous=False
        )
        rows = wire.decode_pull(reply, extra, len(times))  # (T, C)
        done = set(times)
        with self._lock:
            self._wanted = [t for t in self._wanted if t not in done]
        self._emit(Poses(generation, np.array(times, dtype=np.float64), rows))

    def _close_quietly(self, stream: int) -> None:
        try:
            self._request("close", stream=stream, attempts=1)
        except (ProtocolError, _Lost) as exc:
            logger.debug("closing stream %d: %s", stream, exc)

    def _say_goodbye(self) -> bool:
        """Ask the server to close the open stream, without waiting for a reply;
        True if the request was queued."""
        if self._stream is None:
            return False
        data = wire.encode_request(self._next_id, "close", stream=self._stream)
        try:
            self._socket.send(data, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.debug("close not sent: %s", exc)
            return False
        return True

    def _wait_for_settings(self) -> None:
        """Sleep until other settings arrive (after the server refused these)."""
        while not self._stop.is_set():
            with self._lock:
                if self._settings_changed:
                    return
            self._wake.wait(POLL_S)
            self._wake.clear()
        raise _Stopped

    def _pause(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped

    # ------------------------------------------------------------ requests

    def _request(
        self, op: str, attempts: int | None = None, **fields
    ) -> tuple[dict, list[bytes]]:
        """Send one request and return (reply object, further frames).

        Raises:
            ProtocolError: the server answered with an error, or a malformed reply.
            _Lost: no reply after every attempt.
            _Refused: the server refused the security handshake.
            _Stopped: the link was closed meanwhile.
        """
        request_id = self._next_id
        self._next_id += 1
        attempts = self.attempts if attempts is None else attempts
        for attempt in range(attempts):
            data = wire.encode_request(request_id, op, retry=attempt > 0, **fields)
            try:
                self._socket.send(data, zmq.NOBLOCK)
            except zmq.Again:
                logger.debug("%s: not sent, the socket is not ready", op)
            self._last_sent = time.monotonic()
            reply = self._await(request_id)
            if reply is None:
                self._check_handshake()
            if reply is not None:
                obj, extra = reply
                if not obj["ok"]:
                    error = obj["error"]
                    raise ProtocolError(error["code"], str(error.get("message")))
                return obj, extra
            logger.warning(
                "%s: no reply from %s within %.1f s (attempt %d of %d)",
                op,
                self.endpoint,
                self.timeout,
                attempt + 1,
                attempts,
            )
            self._socket.close(linger=0)
            self._socket = self._connect()
        raise _Lost(
            f"no reply from {self.endpoint} to '{op}' ({attempts} x {self.timeout:g} s)"
        )

    def _await(self, request_id: int) -> tuple[dict, list[bytes]] | None:
        """The reply to ``request_id``, or None after ``timeout``."""
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.is_set():
                raise _Stopped
            if not self._socket.poll(int(min(left, POLL_S) * 1000) + 1):
                continue
            frames = self._socket.recv_multipart()
            try:
                obj = wire.decode_reply(frames[0])
            except ProtocolError as exc:
                logger.warning("dropping a malformed reply: %s", exc)
                continue
            if obj["id"] != request_id:
                logger.debug("dropping a reply to earlier request %r", obj["id"])
                continue
            return obj, frames[1:]
        return None
