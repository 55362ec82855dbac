"""The bridge under hostile and greedy clients: a flood of malformed requests, one
client trying to hold every stream, and the clock a client estimates."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import zmq
from test_bridge import FakeModel, collect

from bridge import protocol as proto
from bridge.client import Client
from bridge.protocol import ProtocolError
from bridge.server import Server

pytestmark = pytest.mark.timeout(120)

FUZZ_MESSAGES = 10_000
BATCH = 100  # requests in flight at once

# Values no field of any op accepts, and per field a few more that it refuses.
NEVER_VALID = [None, [], {}, [1, 2], {"a": 1}, "", "\x00", "\ud800x", 1e308, -1e308]
BAD_FIELD = {
    "source": [1, True, "x" * 10_000, "clip:nope", "prior\x00", ["prior"]],
    "seed": [-1, 2**64, 1.5, "0", True, float("nan")],
    "fps": [0, -60, 1e9, "60", True, float("inf"), 1e-9],
    "start": [-1, 1e12, "0", float("nan"), True],
    "mode": ["fast", 1, "PUSH", True],
    "stream": [-1, 2**40, "1", 1.0, True],
    "times": [1.0, ["0"], [-1.0], [float("nan")], list(range(10_000)), [True]],
    "continuous": [1, "yes", None],
    "velocities": [1, "true", None],
    "convention": ["maya", "Unity", 1, None],
    "window": [0, 513, 1.5, "8", True],
    "speed": [-1, 5, float("nan"), "1", True],
    "received": [-1, 2**70, "3", 1.5],
}
OPS = {
    "hello": [],
    "skeleton": [],
    "sources": [],
    "ping": [],
    "open": [
        "source", "seed", "fps", "start", "mode", "velocities", "convention", "window"
    ],
    "pull": ["stream", "times", "continuous"],
    "close": ["stream"],
    "switch": ["stream", "source", "seed"],
    "speed": ["stream", "speed"],
    "ack": ["stream", "received"],
}  # fmt: skip


def hostile_message(rng: random.Random) -> bytes:
    """One control request that the protocol must refuse."""
    if rng.random() < 0.005:  # over the size limit
        return b'{"v":1,"id":1,"op":"hello","x":"' + b"x" * proto.MAX_REQUEST_BYTES
    kind = rng.randrange(8)
    if kind == 0:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 1:  # JSON, but not an object
        choices = [[1, 2], "hello", 3, None, True, [{"v": 1}]]
        return json.dumps(rng.choice(choices)).encode()
    body = {"v": 1, "id": rng.randrange(1, 2**31), "op": rng.choice(list(OPS))}
    if kind == 2:  # bad envelope
        field = rng.choice(["v", "id", "op"])
        body[field] = rng.choice([*NEVER_VALID, 0, 2, "1", 99, 2**70, True, "launch"])
        if field == "op" and isinstance(body["op"], str) and body["op"] in OPS:
            body["op"] = "launch"
        if field == "v" and body["v"] == 1:
            body["v"] = 2
        if field == "id":
            body["op"] = "nope"  # an id may be almost anything; make sure it fails
    elif kind == 3:  # a field the op does not have
        body[rng.choice(["speed", "Source", "x" * 50, "v2"])] = 1
    elif kind == 4:  # deep nesting
        depth = rng.choice([100, 10_000, 20_000])
        return b'{"v":1,"id":1,"op":"open","source":' + b"[" * depth + b"]" * depth
    elif kind == 5:  # invalid UTF-8 around valid JSON
        return b'{"v":1,"id":1,"op":"\xff\xfe"}'
    else:  # a real op with one bad field
        fields = OPS[body["op"]]
        if not fields:
            body["stream"] = rng.choice(BAD_FIELD["stream"])
        else:
            field = rng.choice(fields)
            body[field] = rng.choice(BAD_FIELD[field] + NEVER_VALID)
            if body["op"] == "pull":
                body.setdefault("stream", 12345)  # no such stream either
                body.setdefault("times", [0.0])
            if body["op"] in ("close", "switch", "speed", "ack"):
                body.setdefault("stream", 12345)
    try:
        return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, UnicodeEncodeError):
        return b'{"v":1,"op":'


def test_ten_thousand_hostile_requests_leave_a_60_fps_stream_whole():
    rng = random.Random(7)
    messages = [hostile_message(rng) for _ in range(FUZZ_MESSAGES)]
    small = [m for m in messages if len(m) <= proto.MAX_REQUEST_BYTES]
    assert 9000 < len(small) < len(messages)  # the rest are cut by ZeroMQ

    context = zmq.Context()
    try:
        with Server(FakeModel()) as server:
            good = Client(server.control_endpoint, timeout=2.0, context=context)
            stream = good.open_stream(fps=60)
            first = stream.recv(2.0)
            attacker = context.socket(zmq.DEALER)
            attacker.linger = 0
            attacker.connect(server.control_endpoint)
            received = [first]
            codes: dict[str, int] = {}
            dropped = 0
            start = time.monotonic()

            def answers(count: int) -> None:
                for _ in range(count):
                    assert attacker.poll(5000), "a hostile request got no reply"
                    reply = json.loads(attacker.recv())
                    assert reply["ok"] is False, reply
                    code = reply["error"]["code"]
                    codes[code] = codes.get(code, 0) + 1

            for lo in range(0, len(messages), BATCH):
                expected = 0
                for data in messages[lo : lo + BATCH]:
                    if len(data) <= proto.MAX_REQUEST_BYTES:
                        attacker.send(data)
                        expected += 1
                        continue
                    # Over the limit: ZeroMQ drops the connection, no reply.
                    answers(expected)
                    expected = 0
                    attacker.send(data)
                    assert not attacker.poll(20)
                    attacker.close()
                    attacker = context.socket(zmq.DEALER)
                    attacker.linger = 0
                    attacker.connect(server.control_endpoint)
                    dropped += 1
                answers(expected)
                while stream._socket.poll(0):  # keep up with the good stream
                    received.append(stream.recv(0.1))
            flood_s = time.monotonic() - start
            received += collect(stream, 30)
            assert good.hello()["protocol"] == 1
            attacker.close()
            good.close()
    finally:
        context.destroy(linger=0)

    assert sum(codes.values()) + dropped == FUZZ_MESSAGES
    assert set(codes) <= set(proto.ERROR_CODES) and "internal" not in codes
    seqs = [f.seq for f in received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the stream lost frames"
    assert stream.gaps == 0
    # The stream kept time while the flood ran: frames kept coming at 60 fps.
    assert len(received) >= 60 * flood_s * 0.9
    print(
        f"\n{FUZZ_MESSAGES} hostile requests in {flood_s:.1f} s: {codes}, "
        f"{dropped} cut by the size limit; good stream {len(received)} frames, "
        "no gap"
    )


def test_one_client_cannot_hold_every_stream():
    with Server(FakeModel(), max_streams=6, max_streams_per_client=4) as server:
        greedy = Client(server.control_endpoint, timeout=1.0)
        polite = Client(server.control_endpoint, timeout=1.0)
        assert greedy.hello()["limits"]["max_streams_per_client"] == 4
        held = [greedy.open_pull() for _ in range(4)]
        with pytest.raises(ProtocolError, match="too_many_streams.*one client"):
            greedy.open_pull()
        polite.open_pull()
        polite.open_pull()
        with pytest.raises(ProtocolError, match="too_many_streams.*server allows"):
            polite.open_pull()
        greedy.close_stream(held[0])  # a closed stream frees its place
        assert polite.open_pull() > 0
        greedy.close()
        polite.close()
    with pytest.raises(ValueError, match="max_streams_per_client"):
        Server(FakeModel(), max_streams_per_client=0)


class ShiftedClock(Server):
    """A server whose clock reads SHIFT seconds ahead of this process's."""

    SHIFT = 1234.5678

    def _op_ping(self, owner: bytes) -> dict:
        return {"clock": time.monotonic() + self.SHIFT}


def test_clock_offset_is_estimated_within_a_millisecond():
    with ShiftedClock(FakeModel()) as server, Client(server.control_endpoint) as c:
        errors = [abs(c.clock_offset(samples=5) - ShiftedClock.SHIFT) for _ in range(5)]
    assert np.median(errors) < 1e-3, errors


def test_a_flood_of_bad_input_is_logged_in_part_and_counted(caplog):
    from bridge import server as server_module

    budget = server_module._LogBudget(limit=3, period=0.2)
    assert [budget.allow() for _ in range(5)] == [True, True, True, False, False]
    time.sleep(0.25)
    assert budget.allow()
    assert "2 more malformed messages" in caplog.text


def test_far_reaching_streams_do_not_stall_a_live_one():
    """Frames far apart in motion time, a late start or a recording are work
    that must not hold back another client's 60 fps stream."""
    from motionode.generate import MotionModel

    with Server(MotionModel.load()) as server:
        live_client = Client(server.control_endpoint, timeout=2.0)
        greedy = Client(server.control_endpoint, timeout=30.0)
        live = live_client.open_stream("prior", fps=60)
        live.recv(2.0)
        with pytest.raises(ProtocolError, match="fps"):
            greedy.open_stream("prior", fps=0.5)
        slow = greedy.open_stream("prior", fps=2.0)
        with pytest.raises(ProtocolError, match="motion between frames"):
            greedy.set_speed(slow, 4.0)
        late = greedy.open_stream("prior", fps=30.0, start=60.0)  # solved at open
        record = greedy.open_recording("prior", fps=1.0)
        frames = collect(live, 120)
        late.recv(2.0)
        record.recv(5.0)
        seqs = [f.seq for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + 120)) and live.gaps == 0
        sent = np.array([f.sent for f in frames])
        assert np.diff(sent).max() < 0.25  # no frame held back for long
        greedy.close()
        live_client.close()


def test_a_long_pull_holds_back_no_other_request():
    """A pull that solves seconds of motion is computed off the control thread:
    another client's pings are answered meanwhile, and the pull's reply is right."""
    import threading

    from motionode.generate import MotionModel

    model = MotionModel.load()
    with (
        Server(model) as server,
        Client(server.control_endpoint, timeout=60.0) as puller,
        Client(server.control_endpoint, timeout=2.0) as other,
    ):
        stream = puller.open_pull("prior", seed=2)
        times = np.sort(np.random.default_rng(0).uniform(0, 25.0, 256))
        result = {}
        began = time.monotonic()
        worker = threading.Thread(
            target=lambda: result.update(rows=puller.pull(stream, times))
        )
        worker.start()
        waits = []
        while worker.is_alive() and len(waits) < 200:
            sent = time.monotonic()
            other.ping()
            waits.append(time.monotonic() - sent)
            time.sleep(0.01)
        worker.join(60)
        took = time.monotonic() - began
    assert took > 0.5 and len(waits) > 10  # the pull was long enough to matter
    assert max(waits) < 0.25
    alone = model.open("prior", seed=2).channels_at(times).astype(np.float32)
    assert np.array_equal(result["rows"], alone)
