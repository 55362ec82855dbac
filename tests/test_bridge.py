"""The ZeroMQ bridge: wire format, server and client, over real loopback sockets."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from bridge import protocol as proto
from bridge.client import Client, StreamEnded, blend
from bridge.protocol import ProtocolError
from bridge.server import Server, check_endpoint
from motionode.bvh import Skeleton, parse_bvh

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
TRAINING_CHECKPOINT = Path("/work/run/default_ckpt.safetensors")
WALK_CLIP = ROOT / "assets" / "clips" / "dataset-1_walk_normal_001.bvh"

RIG = """HIERARCHY
ROOT Hips
{
  OFFSET 0 90 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Chest
  {
    OFFSET 0 10 0
    CHANNELS 3 Xrotation Yrotation Zrotation
    End Site
    {
      OFFSET 0 20 0
    }
  }
}
MOTION
Frames: 1
Frame Time: 0.0333333
0 90 0 0 0 0 0 0 0
"""


class FakeStream:
    """Poses that are a fixed function of (seed, t), like a real PoseStream's: every
    channel turns steadily, so unwrapped and principal angles differ."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.switches: list[tuple[float, int]] = []  # (time, seed) from then on
        self.latest = 0.0

    def channels_at(
        self, times: np.ndarray, continuous: bool = True, velocities: bool = False
    ) -> np.ndarray:
        t = np.asarray(times, dtype=np.float64).reshape(-1, 1)  # (T, 1)
        seed = np.full_like(t, self.seed)
        for at, new in self.switches:
            seed[t >= at] = new
        self.latest = max(self.latest, float(t.max(initial=0.0)))
        angles = t * 50.0 * np.arange(1, 10) + seed  # (T, 9)
        rows = angles if continuous else (angles + 180.0) % 360.0 - 180.0
        if velocities:
            rates = np.broadcast_to(50.0 * np.arange(1, 10), rows.shape)
            rows = np.concatenate([rows, rates], axis=1)  # (T, 18)
        return rows

    def switch(self, source, seed: int, at: float) -> float:
        """Like PoseStream.switch: from the next 1/30 s step after what was asked."""
        at = max(math.ceil(at * 30 - 1e-9), math.floor(self.latest * 30) + 1) / 30
        self.switches.append((at, seed))
        return at


class FakeModel:
    """The part of MotionModel the server uses, on a two-joint rig."""

    def __init__(self) -> None:
        self.skeleton = parse_bvh(RIG, "rig").skeleton
        self.spec = SimpleNamespace(units_to_m=0.01)
        self.metadata = {"licence": "test rig", "step": 0}

    def sources(self) -> list[str]:
        return ["prior", "clip:walk"]

    def open(self, source="prior", seed: int = 0) -> FakeStream:
        names = [source] if isinstance(source, str) else [p[0] for p in source]
        if any(name not in self.sources() for name in names):
            raise ValueError(f"source: unknown {source!r}")
        return FakeStream(seed)


@pytest.fixture
def zctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # closes whatever a failed test left open


@pytest.fixture
def server():
    srv = Server(FakeModel())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with Client(server.control_endpoint, timeout=1.0, retries=1) as c:
        yield c


@pytest.fixture(scope="module")
def real_model(tmp_path_factory):
    """A MotionModel: the bundled one, else the training run's latest checkpoint,
    else an untrained small network on the bundled walk clip's rig."""
    import torch

    from motionode.bvh import read_bvh
    from motionode.features import build_spec
    from motionode.generate import MotionModel, default_model_path
    from motionode.model import LatentODEVAE, ModelConfig

    if default_model_path().exists():
        return MotionModel.load()
    if TRAINING_CHECKPOINT.exists():
        # The run rewrites its checkpoint in place now and then: load a copy.
        copy = tmp_path_factory.mktemp("ckpt") / TRAINING_CHECKPOINT.name
        shutil.copy(TRAINING_CHECKPOINT, copy)
        return MotionModel.load(copy, seeds=[WALK_CLIP])
    clip = read_bvh(WALK_CLIP)
    spec = build_spec([clip], units_to_m=0.01)
    torch.manual_seed(0)
    net = LatentODEVAE(
        ModelConfig(feature_dim=spec.dim, latent_dim=8, hidden=16, ode_hidden=16)
    )
    return MotionModel(
        net, spec, {"licence": "untrained test model"}, seeds={WALK_CLIP.stem: clip}
    )


def collect(stream, count: int, timeout: float = 5.0) -> list:
    return [stream.recv(timeout) for _ in range(count)]


def check_rates(frames_by_fps: dict) -> None:
    """Exact times, consecutive seqs, equal payloads wherever times coincide."""
    payload_at = {}
    for fps, frames in frames_by_fps.items():
        assert [f.seq for f in frames] == list(range(len(frames)))
        for f in frames:
            assert f.t == f.seq / fps
            if f.t in payload_at:
                np.testing.assert_array_equal(f.channels, payload_at[f.t])
            payload_at[f.t] = f.channels
    assert 0.5 in payload_at  # where the 24, 60 and 144 fps grids all meet


# ---------------------------------------------------------------- wire format


def test_public_names():
    import bridge

    assert sorted(bridge.__all__) == sorted(
        [
            "VERSION",
            "AuthenticationError",
            "Client",
            "ClientKeys",
            "ClientStream",
            "Frame",
            "JointPoses",
            "ProtocolError",
            "Server",
            "ServerKeys",
            "StreamEnded",
            "generate_keys",
        ]
    )


def test_protocol_document_example_matches_the_encoder():
    text = (ROOT / "bridge" / "PROTOCOL.md").read_text()
    hex_text = re.search(r"```hex\n(.*?)```", text, re.DOTALL).group(1)
    message = proto.encode_frame(42, 3, 3 / 60, 1234.5, np.array([1.0, -2.5, 90.0]))
    assert bytes.fromhex(hex_text) == message
    decoded = proto.decode_stream_message(message)
    assert (decoded.kind, decoded.stream, decoded.seq) == (proto.KIND_FRAME, 42, 3)
    assert (decoded.t, decoded.sent) == (0.05, 1234.5)
    assert decoded.channels.tolist() == [1.0, -2.5, 90.0]
    end = proto.encode_end(42, 4, 4 / 60, 1234.6, "closed")
    assert end[49:] == b'{"reason":"closed"}' and end[14] == proto.KIND_END


def test_stream_messages_round_trip_and_reject_damage():
    info = {"stream": 7, "skeleton": {"names": ["Hips"]}}
    message = proto.encode_skeleton(7, 5, 0.25, 9.0, info)
    decoded = proto.decode_stream_message(message)
    assert decoded.kind == proto.KIND_SKELETON and decoded.info == info
    assert (decoded.seq, decoded.t, decoded.sent) == (5, 0.25, 9.0)

    frame = proto.encode_frame(7, 1, 0.5, 1.0, np.arange(4.0))
    damaged = [
        frame[:-1],
        frame + b"\0",
        b"0000002a|" + frame[9:],
        frame[:9] + b"XXXX" + frame[13:],
        frame[:14] + b"\x09" + frame[15:],
        b"short",
    ]
    for data in damaged:
        with pytest.raises(ProtocolError) as exc:
            proto.decode_stream_message(data)
        assert exc.value.code == "bad_message"


def test_skeleton_description_rebuilds_the_rig():
    skeleton = parse_bvh(RIG, "rig").skeleton
    desc = json.loads(json.dumps(proto.describe_skeleton(skeleton, 0.01)))
    again = Skeleton.from_dict(desc)
    assert again.names == skeleton.names and again.channels == skeleton.channels
    np.testing.assert_array_equal(again.offsets, skeleton.offsets)
    np.testing.assert_array_equal(again.end_offsets, skeleton.end_offsets)
    assert desc["rotation_orders"] == ["ZXY", "XYZ"]
    assert desc["channel_starts"] == [0, 6] and desc["num_channels"] == 9
    assert (desc["up_axis"], desc["handedness"], desc["units_to_m"]) == (
        "Y",
        "right",
        0.01,
    )


def test_only_loopback_is_bound_unless_allowed(caplog):
    assert check_endpoint("control", "tcp://127.0.0.1:0") == "tcp://127.0.0.1:*"
    assert check_endpoint("control", "ipc:///tmp/x") == "ipc:///tmp/x"
    for endpoint in (
        "tcp://0.0.0.0:5555",
        "tcp://*:5555",
        "tcp://localhost:1",
        "tcp://10.0.0.1:5555",
        "udp://127.0.0.1:5",
        "127.0.0.1:5555",
    ):
        with pytest.raises(ValueError, match="control"):
            check_endpoint("control", endpoint)
    with pytest.raises(ValueError, match="CURVE keys"):
        Server(FakeModel(), stream="tcp://0.0.0.0:0")
    assert "WITHOUT AUTHENTICATION" not in caplog.text
    assert check_endpoint("stream", "tcp://0.0.0.0:0", secured=True)
    assert "WITHOUT AUTHENTICATION" not in caplog.text
    assert check_endpoint("stream", "tcp://0.0.0.0:0", insecure=True)
    assert "WITHOUT AUTHENTICATION" in caplog.text


# ---------------------------------------------------------------- control


def test_hello_skeleton_sources_and_clock(server, client):
    hello = client.hello()
    assert hello["protocol"] == 1 and hello["stream_endpoint"] == server.stream_endpoint
    assert hello["model"]["channels"] == 9 and hello["model"]["licence"] == "test rig"
    assert client.sources() == ["prior", "clip:walk"]
    assert Skeleton.from_dict(client.skeleton()).names == ["Hips", "Chest"]
    # One machine, one monotonic clock: the offset is the measuring error only.
    assert abs(client.clock_offset()) < 0.05


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"fps": "fast"}, "bad_request"),
        ({"fps": True}, "bad_request"),
        ({"fps": 0}, "bad_request"),
        ({"fps": 1001}, "bad_request"),
        ({"fps": 60, "seed": -1}, "bad_request"),
        ({"fps": 60, "seed": 1.5}, "bad_request"),
        ({"fps": 60, "start": -0.1}, "bad_request"),
        ({"fps": 60, "mode": "stream"}, "bad_request"),
        ({"fps": 60, "fsp": 60}, "bad_request"),
        ({}, "bad_request"),
        ({"fps": 60, "source": "clip:nope"}, "unknown_source"),
    ],
)
def test_open_rejects_bad_fields(client, fields, code):
    with pytest.raises(ProtocolError) as exc:
        client.request("open", **fields)
    assert exc.value.code == code
    assert (list(fields)[-1] if fields else "fps") in exc.value.message


def test_pull_matches_the_model(client):
    stream = client.open_pull(source="clip:walk", seed=4)
    times = [0.0, 2.5, 0.1, 1 / 3, 7.25]
    model_stream = FakeModel().open("clip:walk", 4)
    for continuous in (True, False):
        expected = model_stream.channels_at(np.array(times), continuous=continuous)
        np.testing.assert_array_equal(
            client.pull(stream, times, continuous=continuous),
            expected.astype(np.float32),
        )
    with pytest.raises(ProtocolError, match="times"):
        client.pull(stream, np.arange(proto.MAX_PULL_TIMES + 1) / 60)
    push = client.open_stream(fps=30)
    with pytest.raises(ProtocolError, match="wrong_mode"):
        client.pull(push.id, [0.0])
    client.close_stream(stream)
    with pytest.raises(ProtocolError, match="unknown_stream"):
        client.pull(stream, [0.0])


def test_retried_request_runs_once(server, zctx):
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.ROUTING_ID, b"retry-test")
    sock.connect(server.control_endpoint)
    replies = []
    for retry in (False, True):
        sock.send(proto.encode_request(5, "open", retry=retry, mode="pull"))
        assert sock.poll(2000)
        replies.append(json.loads(sock.recv()))
    sock.send(proto.encode_request(6, "open", mode="pull"))
    assert sock.poll(2000)
    fresh = json.loads(sock.recv())
    sock.close()
    assert replies[0] == replies[1] and replies[0]["ok"]
    assert fresh["stream"] != replies[0]["stream"]


# ---------------------------------------------------------------- streams


def test_skeleton_comes_first_for_new_and_late_subscribers(server, client, zctx):
    # Fresh streams: open_stream itself insists on the skeleton message first.
    for _ in range(20):
        stream = client.open_stream(fps=240)
        assert stream.skeleton["names"] == ["Hips", "Chest"]
        assert stream.recv(2.0).seq == 0
        stream.close()

    # Late subscribers to a running fast stream: skeleton first, then no gap.
    running = client.open_stream(fps=250)
    rng = random.Random(0)
    for _ in range(20):
        time.sleep(rng.uniform(0.0, 0.01))
        sub = zctx.socket(zmq.SUB)
        sub.linger = 0
        sub.connect(server.stream_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, proto.topic(running.id))
        messages = []
        while len(messages) < 3 and sub.poll(2000):
            messages.append(proto.decode_stream_message(sub.recv()))
        sub.close()
        assert messages[0].kind == proto.KIND_SKELETON
        assert messages[0].info["skeleton"]["names"] == ["Hips", "Chest"]
        first_frame = next(m for m in messages if m.kind == proto.KIND_FRAME)
        assert first_frame.seq == messages[0].seq
    frames = collect(running, 50)
    assert running.gaps == 0 and frames[-1].seq == frames[0].seq + 49


def test_subscription_made_before_open_starts_the_stream(server, client, zctx):
    # A monitor subscribed to everything before any stream exists.
    monitor = zctx.socket(zmq.SUB)
    monitor.linger = 0
    monitor.connect(server.stream_endpoint)
    monitor.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(0.2)  # let the subscription reach the server
    opened = client.request("open", source="prior", fps=100.0, seed=0, mode="push")
    topic = opened[0]["topic"].encode()
    messages = []
    while len(messages) < 4 and monitor.poll(3000):
        messages.append(monitor.recv())
    monitor.close()
    assert len(messages) == 4 and all(m.startswith(topic) for m in messages)
    decoded = [proto.decode_stream_message(m) for m in messages]
    assert decoded[0].kind == proto.KIND_SKELETON
    assert [m.seq for m in decoded[1:]] == [0, 1, 2]


def test_far_jumps_are_refused_and_steps_allowed(client):
    with pytest.raises(ProtocolError, match="start"):
        client.request("open", source="prior", fps=30.0, start=61.0, mode="push")
    pid = client.open_pull()
    with pytest.raises(ProtocolError, match="past this stream's latest time"):
        client.pull(pid, [1e9])
    with pytest.raises(ProtocolError, match="past this stream's latest time"):
        client.pull(pid, [30.5])
    for t in (25.0, 50.0, 75.0):  # stepping forward reaches any time
        assert client.pull(pid, [t]).shape == (1, 9)


def test_three_rates_at_once_agree_exactly(client):
    streams = {fps: client.open_stream(fps=fps, seed=3) for fps in (24, 60, 144)}
    frames = {fps: collect(s, round(0.5 * fps) + 1) for fps, s in streams.items()}
    check_rates(frames)
    for fps, s in streams.items():
        np.testing.assert_array_equal(
            frames[fps][-1].channels,
            FakeStream(3).channels_at([0.5], continuous=False)[0].astype(np.float32),
        )
        assert s.gaps == 0
    # Paced by the server clock: 72 frames at 144 fps take about half a second.
    spread = frames[144][-1].sent - frames[144][0].sent
    assert 0.4 < spread < 1.0


def test_fractional_rate_and_start(client):
    stream = client.open_stream(fps=29.97, start=10.0)
    for f in collect(stream, 10):
        assert f.t == 10.0 + f.seq / 29.97


@pytest.mark.slow
def test_real_model_three_rates_and_pull(real_model):
    source = real_model.sources()[-1]
    with Server(real_model) as srv, Client(srv.control_endpoint, timeout=5.0) as c:
        streams = {fps: c.open_stream(source, fps=fps, seed=2) for fps in (24, 60, 144)}
        frames = {
            fps: collect(s, round(0.5 * fps) + 1, timeout=10.0)
            for fps, s in streams.items()
        }
        check_rates(frames)
        pull = c.open_pull(source, seed=2)
        times = np.array([0.0, 0.5, 0.1, 1.3, 2.7])
        expected = real_model.open(source, seed=2).channels_at(times)
        np.testing.assert_array_equal(c.pull(pull, times), expected.astype(np.float32))
        # Push frames hold principal angles, as a non-continuous pull does.
        pushed = frames[144][::7]
        np.testing.assert_array_equal(
            c.pull(pull, [f.t for f in pushed], continuous=False),
            np.stack([f.channels for f in pushed]),
        )


GARBAGE = [
    (random.Random(0).randbytes(64), "bad_json"),
    (b"not json", "bad_json"),
    (b"", "bad_json"),
    (b"[1, 2]", "bad_json"),
    (b'{"v": 1, "id": 1, "op": "open", "fps": NaN}', "bad_json"),
    (b'{"v": 1, "id": 1, "op": "open", "fps": 1' + b"0" * 400 + b"}", "bad_request"),
    (b"[" * 50000, "bad_json"),
    (b'{"v": 1, "id": 2, "op": "open", "fps": "60"}', "bad_request"),
    (b'{"v": 1, "id": 3, "op": "pull", "stream": 1, "times": [-1]}', "bad_request"),
    (b'{"v": 1, "id": 4, "op": "pull", "stream": 1, "times": 5}', "bad_request"),
    (b'{"v": 1, "id": 5, "op": "hello", "extra": 1}', "bad_request"),
    (b'{"v": 1, "id": {"a": 1}, "op": "hello"}', "bad_request"),
    (b'{"v": 1, "id": 6, "op": "hello", "retry": "yes"}', "bad_request"),
    (b'{"v": 1, "id": 7, "op": "launch"}', "unknown_op"),
    (b'{"v": 1, "id": 8}', "unknown_op"),
    (b'{"v": 1, "id": 12, "op": ["hello"]}', "unknown_op"),
    (b'{"v": 99, "id": 9, "op": "hello"}', "bad_version"),
    (b'{"v": true, "id": 10, "op": "hello"}', "bad_version"),
    (b'{"v": 1.0, "id": 13, "op": "hello"}', "bad_version"),
    (b'{"v": 1, "id": 11, "op": "close", "stream": 1}', "unknown_stream"),
]


def test_garbage_gets_errors_while_a_stream_runs_on(server, client, zctx):
    stream = client.open_stream(fps=60)
    first = stream.recv(2.0)
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.control_endpoint)

    for data, code in GARBAGE:
        sock.send(data)
        assert sock.poll(2000), data[:40]
        reply = json.loads(sock.recv())
        assert not reply["ok"] and reply["error"]["code"] == code, data[:40]
        if code != "bad_json":
            sent_id = json.loads(data).get("id")
            assert reply["id"] == (sent_id if isinstance(sent_id, int) else None)
    sock.send_multipart([b"{}", b"extra"])
    assert sock.poll(2000)
    assert json.loads(sock.recv())["error"]["code"] == "bad_frames"
    # Over the size limit: ZeroMQ cuts the connection; no reply, no harm.
    sock.send(b"x" * (proto.MAX_REQUEST_BYTES + 1))
    assert not sock.poll(300)
    sock.close()

    frames = [first, *collect(stream, 20)]
    assert [f.seq for f in frames] == list(range(first.seq, first.seq + 21))
    assert stream.gaps == 0
    assert max(b.sent - a.sent for a, b in itertools.pairwise(frames)) < 0.5
    assert client.hello()["protocol"] == 1


def test_lease_expiry_frees_streams(zctx):
    with Server(FakeModel(), lease=0.5) as srv:
        owner = Client(srv.control_endpoint, timeout=1.0, retries=0, context=zctx)
        other = Client(srv.control_endpoint, timeout=1.0, retries=0, context=zctx)
        pushed = owner.open_stream(fps=50)
        pulled = owner.open_pull()
        kept = other.open_pull()
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            other.ping()  # renews only the other client's stream
            time.sleep(0.05)
        with pytest.raises(StreamEnded, match="expired"):
            while True:
                pushed.recv(1.0)
        assert pushed.gaps == 0
        with pytest.raises(ProtocolError, match="unknown_stream"):
            other.pull(pulled, [0.0])
        assert other.pull(kept, [0.0]).shape == (1, 9)
        owner.close()
        other.close()


def test_reading_a_stream_keeps_it_alive():
    with Server(FakeModel(), lease=0.4) as srv, Client(srv.control_endpoint) as c:
        stream = c.open_stream(fps=50)
        frames = collect(stream, 75)  # 1.5 s: well past the lease
        assert frames[-1].seq == 74 and stream.ended is None


def test_server_stop_ends_streams(zctx):
    srv = Server(FakeModel())
    srv.start()
    c = Client(srv.control_endpoint, timeout=1.0, context=zctx)
    stream = c.open_stream(fps=100)
    collect(stream, 5)
    srv.stop()
    rest = list(stream.frames(timeout=2.0))
    assert [f.seq for f in rest] == list(range(5, 5 + len(rest)))
    assert stream.ended == "server_stopped"
    c.close()


# ---------------------------------------------------------------- lost replies


def test_lost_reply_is_recovered_from_a_restarted_server(zctx):
    # A server that takes the request and dies without answering ...
    dying_context = zmq.Context()
    dying = dying_context.socket(zmq.ROUTER)
    dying.linger = 0
    dying.bind("tcp://127.0.0.1:*")
    endpoint = dying.getsockopt_string(zmq.LAST_ENDPOINT)
    c = Client(endpoint, timeout=0.5, retries=6, context=zctx)
    result = {}
    asking = threading.Thread(target=lambda: result.update(c.hello()))
    asking.start()
    assert dying.poll(2000)
    _, request = dying.recv_multipart()
    assert json.loads(request)["op"] == "hello"
    dying.close()
    dying_context.term()  # returns once the port is free again

    # ... and a new one on the same port, which gets the retry.
    with Server(FakeModel(), control=endpoint) as srv:
        asking.join(5.0)
        assert srv.control_endpoint == endpoint
    assert result["protocol"] == 1
    c.close()


def test_stale_reply_is_never_taken_for_a_new_one(zctx):
    slow = zctx.socket(zmq.ROUTER)
    slow.linger = 0
    slow.setsockopt(zmq.ROUTER_HANDOVER, 1)
    slow.bind("tcp://127.0.0.1:*")
    c = Client(
        slow.getsockopt_string(zmq.LAST_ENDPOINT), timeout=1.0, retries=0, context=zctx
    )

    def ask(into: list) -> threading.Thread:
        def run() -> None:
            try:
                into.append(c.ping())
            except TimeoutError as exc:
                into.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # The first ping is received and never answered: the client gives up on it.
    first: list = []
    asking = ask(first)
    assert slow.poll(5000)
    routing_id, old = slow.recv_multipart()
    asking.join(5.0)
    assert isinstance(first[0], TimeoutError)

    # Its reply turns up while the client waits for the next ping's.
    second: list = []
    asking = ask(second)
    assert slow.poll(5000)
    _, new = slow.recv_multipart()
    old_id, new_id = json.loads(old)["id"], json.loads(new)["id"]
    assert old_id != new_id
    slow.send_multipart([routing_id, proto.encode_reply(old_id, clock=111.0)])
    slow.send_multipart([routing_id, proto.encode_reply(new_id, clock=222.0)])
    asking.join(5.0)
    assert second == [222.0]
    c.close()
    slow.close()


# ---------------------------------------------------------------- stream controls


def test_switch_changes_a_live_stream_from_the_next_frame_on(client):
    stream = client.open_stream(fps=60, seed=1)
    before = collect(stream, 10)
    reply = client.switch(stream, "clip:walk", seed=7)
    assert reply["source"] == "clip:walk" and reply["seed"] == 7
    assert reply["at"] == reply["motion_time"]  # speed 1: the two clocks agree
    frames = before + collect(stream, 30)
    assert reply["at"] > before[-1].t and reply["at"] < frames[-1].t
    assert [f.seq for f in frames] == list(range(40)) and stream.gaps == 0
    for f in frames:
        seed = 7 if f.t >= reply["at"] else 1
        expected = FakeStream(seed).channels_at([f.t], continuous=False)[0]
        np.testing.assert_array_equal(f.channels, expected.astype(np.float32))


def test_speed_scales_motion_time_and_keeps_stream_time(client):
    stream = client.open_stream(fps=100, seed=2)
    collect(stream, 5)
    paused = client.set_speed(stream, 0)
    frames = collect(stream, 20)
    fast = client.set_speed(stream, 2.0)
    frames += collect(stream, 20)
    assert paused["at"] == paused["motion_time"] and fast["at"] > paused["at"]
    # Switching a paused stream: it happens in motion time, once it plays on.
    slow = client.open_stream(fps=100, seed=2)
    client.set_speed(slow, 0)
    assert client.switch(slow, "prior", seed=1)["at"] is None
    assert fast["motion_time"] == paused["motion_time"]  # nothing moved meanwhile
    for f in frames:
        assert f.t == f.seq / 100  # stream time keeps the wall clock's pace
        if f.t < fast["at"]:
            motion = paused["motion_time"]
        else:
            motion = fast["motion_time"] + 2.0 * (f.t - fast["at"])
        expected = FakeStream(2).channels_at([motion], continuous=False)[0]
        np.testing.assert_allclose(f.channels, expected, atol=1e-3)


def test_timeline_is_continuous_and_never_rewrites_the_past():
    from bridge.timeline import Timeline

    line = Timeline()
    assert line.motion([0.0, 1.5]).tolist() == [0.0, 1.5]  # speed 1: exactly t
    assert line.set_speed(1.0, 0.0) == 1.0
    assert line.set_speed(3.0, 2.0) == 1.0  # paused from 1 s to 3 s
    assert line.motion([0.5, 2.0, 3.0, 4.0]).tolist() == [0.5, 1.0, 1.0, 3.0]
    assert line.speeds([0.5, 2.0, 3.0]).tolist() == [1.0, 0.0, 2.0]
    assert line.stream_time(5.0) == 5.0
    with pytest.raises(ValueError, match="before the latest speed change"):
        line.set_speed(2.0, 1.0)
    line.set_speed(5.0, 0.0)
    assert line.stream_time(line.motion(5.0)[0] + 0.1) is None  # never, paused


def test_pull_streams_map_times_through_their_speed(client):
    pid = client.open_pull(seed=3)
    client.pull(pid, [1.0])  # speed changes apply from the latest time asked
    reply = client.set_speed(pid, 0.5)
    assert (reply["at"], reply["motion_time"]) == (1.0, 1.0)
    rows = client.pull(pid, [0.5, 1.0, 3.0])
    expected = FakeStream(3).channels_at([0.5, 1.0, 2.0])
    np.testing.assert_allclose(rows, expected, atol=1e-4)
    switched = client.switch(pid, "prior", seed=9)
    assert switched["at"] > 3.0  # after everything already pulled
    assert switched["motion_time"] == pytest.approx(2.0 + 0.5 * (switched["at"] - 3.0))


def test_blend_source_opens_and_echoes_its_seeds(client):
    source = blend(("clip:walk", 0.25), ("prior", 0.75, 3))
    stream = client.open_stream(source, fps=30, seed=5)
    assert stream.source == {
        "blend": [
            {"source": "clip:walk", "seed": 5, "weight": 0.25},
            {"source": "prior", "seed": 3, "weight": 0.75},
        ]
    }
    assert stream.info["source"] == stream.source
    assert stream.recv(2.0).seq == 0
    reply = client.switch(stream, blend(("prior", 0.5), ("prior", 0.5, 1)))
    assert reply["source"]["blend"][0]["seed"] == 0


@pytest.mark.parametrize(
    "op, fields, code, words",
    [
        ("speed", {"speed": -0.5}, "bad_request", "speed: expected a number from 0"),
        ("speed", {"speed": 4.5}, "bad_request", "got 4.5"),
        ("speed", {"speed": "fast"}, "bad_request", "speed"),
        ("speed", {}, "bad_request", "missing field(s) ['speed']"),
        ("switch", {"source": "clip:nope"}, "unknown_source", "clip:nope"),
        ("switch", {"source": 5}, "bad_request", "source"),
        ("switch", {}, "bad_request", "missing field(s) ['source']"),
        (
            "switch",
            {"source": blend(("prior", 0.5), ("clip:walk", 0.4))},
            "bad_request",
            "weights sum to 0.9",
        ),
        (
            "switch",
            {"source": blend(("prior", 1.0))},
            "bad_request",
            "source.blend: expected a list of 2 to 8",
        ),
        (
            "switch",
            {"source": blend(("prior", 1.5), ("prior", -0.5))},
            "bad_request",
            "source.blend[0].weight",
        ),
        (
            "switch",
            {"source": {"blend": [{"source": "prior", "weight": 0.5, "x": 1}] * 2}},
            "bad_request",
            "source.blend[0]: expected only",
        ),
        (
            "switch",
            {"source": blend(("prior", 0.5), ("clip:nope", 0.5))},
            "unknown_source",
            "clip:nope",
        ),
        ("switch", {"source": {"mix": []}}, "bad_request", "source"),
    ],
)
def test_stream_controls_reject_bad_fields(client, op, fields, code, words):
    stream = client.open_pull()
    with pytest.raises(ProtocolError) as exc:
        client.request(op, stream=stream, **fields)
    assert exc.value.code == code and words in exc.value.message
    good = {"speed": {"speed": 1.0}, "switch": {"source": "prior"}}[op]
    with pytest.raises(ProtocolError, match="unknown_stream"):
        client.request(op, stream=stream + 1, **good)


def test_velocities_ride_in_frames_and_pulls_scaled_by_speed(client):
    stream = client.open_stream(fps=50, velocities=True)
    assert stream.info["velocities"] is True
    rates = (50.0 * np.arange(1, 10)).astype(np.float32)
    first = stream.recv(2.0)
    np.testing.assert_array_equal(first.velocities, rates)
    assert first.channels.shape == (9,)
    reply = client.set_speed(stream, 0.5)
    later = [f for f in collect(stream, 10) if f.t >= reply["at"]]
    assert later and all(np.array_equal(f.velocities, rates / 2) for f in later)

    pid = client.open_pull(velocities=True)
    rows = client.pull(pid, [0.1, 0.2])
    assert rows.shape == (2, 18)
    np.testing.assert_array_equal(rows[:, 9:], np.stack([rates, rates]))
    plain = client.open_stream(fps=50)
    assert plain.recv(2.0).velocities is None


def test_velocity_flag_marks_the_frame_layout():
    message = proto.encode_frame(7, 1, 0.5, 1.0, np.arange(3.0), np.ones(3))
    assert proto.HEADER.unpack_from(message, 9)[3] == proto.FLAG_VELOCITIES
    decoded = proto.decode_stream_message(message)
    assert decoded.channels.tolist() == [0.0, 1.0, 2.0]
    assert decoded.velocities.tolist() == [1.0, 1.0, 1.0]
    odd = bytearray(proto.encode_frame(7, 1, 0.5, 1.0, np.arange(3.0)))
    odd[15] = proto.FLAG_VELOCITIES  # three values cannot split in two halves
    with pytest.raises(ProtocolError, match="odd"):
        proto.decode_stream_message(bytes(odd))


def test_real_model_velocities_over_the_wire(real_model):
    source = real_model.sources()[-1]
    with Server(real_model) as srv, Client(srv.control_endpoint, timeout=10.0) as c:
        pid = c.open_pull(source, seed=1, velocities=True)
        c.set_speed(pid, 2.0)
        rows = c.pull(pid, [0.25, 0.5])
    expected = real_model.open(source, seed=1).channels_at(
        np.array([0.5, 1.0]), velocities=True
    )
    C = expected.shape[1] // 2
    expected[:, C:] *= 2.0  # per second of stream time, at double speed
    np.testing.assert_allclose(rows, expected.astype(np.float32), rtol=1e-6, atol=1e-4)


def test_recording_arrives_complete_and_faster_than_real_time(server, client, zctx):
    seconds, fps = 10.0, 60
    with Client(server.control_endpoint, timeout=1.0, context=zctx) as live_client:
        live = live_client.open_stream(fps=100, seed=1)
        began = time.monotonic()
        recording = client.open_recording(fps=fps, seed=2, window=64)
        frames = []
        while len(frames) < seconds * fps:
            frames.append(recording.recv(2.0))
            if len(frames) == 200:
                time.sleep(0.3)  # a slow reader: the server waits, loses nothing
        took = time.monotonic() - began
        live_frames = collect(live, 50)

    assert [f.seq for f in frames] == list(range(int(seconds * fps)))
    assert all(f.t == f.seq / fps for f in frames) and recording.gaps == 0
    assert took < seconds / 2  # typically 0.5 s, 0.3 s of it the reader's pause
    expected = FakeStream(2).channels_at([f.t for f in frames], continuous=False)
    got = np.stack([f.channels for f in frames])
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    # The live stream kept its pace meanwhile (a stalled one would lag seconds).
    assert live.gaps == 0
    assert max(b.sent - a.sent for a, b in itertools.pairwise(live_frames)) < 0.25


def test_recording_controls_reject_bad_fields(client):
    with pytest.raises(ProtocolError, match="window: only a 'record' stream"):
        client.request("open", fps=30, window=8)
    for window in (0, 513, 2.5, True):
        with pytest.raises(ProtocolError, match="window: expected an integer"):
            client.request("open", fps=30, mode="record", window=window)
    with pytest.raises(ProtocolError, match=r"missing field\(s\) \['fps'\]"):
        client.request("open", mode="record")
    push = client.open_stream(fps=30)
    with pytest.raises(ProtocolError) as exc:
        client.request("ack", stream=push.id, received=1)
    assert exc.value.code == "wrong_mode"
    recording = client.open_recording(fps=30, window=4)
    assert recording.window == 4 and recording.info["window"] == 4
    recording.recv(2.0)
    with pytest.raises(ProtocolError, match="received: 1000 frames, but only"):
        client.request("ack", stream=recording.id, received=1000)
    with pytest.raises(ProtocolError, match="received: expected a count"):
        client.request("ack", stream=recording.id, received=-1)


@pytest.mark.slow
def test_real_model_recording_beats_the_clock(real_model):
    source = real_model.sources()[-1]
    seconds, fps = 4.0, 60
    with Server(real_model) as srv, Client(srv.control_endpoint, timeout=10.0) as c:
        began = time.monotonic()
        recording = c.open_recording(source, fps=fps, seed=1)
        frames = [recording.recv(10.0) for _ in range(int(seconds * fps))]
        took = time.monotonic() - began
    assert [f.seq for f in frames] == list(range(int(seconds * fps)))
    assert all(f.t == f.seq / fps for f in frames)
    assert took < seconds


def test_real_model_switch_and_slow_motion_stay_smooth(real_model):
    # A live stream at 120 fps through a switch and a speed change: no step between
    # consecutive frames larger than the bundled clips' largest (at 120 fps).
    clips = list(real_model.seeds.values())
    data_step = max(
        np.linalg.norm(np.diff(c.world_positions(), axis=0), axis=-1).max()
        * c.fps
        / 120
        for c in clips
    )
    sources = real_model.sources()
    with Server(real_model) as srv, Client(srv.control_endpoint, timeout=10.0) as c:
        stream = c.open_stream(sources[-1], fps=120, seed=1)
        frames = collect(stream, 24, timeout=10.0)
        switched = c.switch(stream, sources[1], seed=2)
        slowed = c.set_speed(stream, 0.5)
        # Read on until both have played out (a loaded server may run ahead of
        # this reader: controls apply at the next frame the server sends).
        # At half speed the 0.5 s cross-fade takes a second of stream time.
        until = max(slowed["at"] + 0.3, switched["at"] + 1.1)
        while frames[-1].t < until and len(frames) < 600:
            frames.append(stream.recv(10.0))
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert frames[24].t <= min(switched["at"], slowed["at"])
    assert max(switched["at"], slowed["at"]) + 0.3 < frames[-1].t
    rows = np.stack([f.channels for f in frames]).astype(np.float64)
    from motionode.bvh import Clip

    pos = Clip(real_model.skeleton, rows, 1 / 120).world_positions()
    step = np.linalg.norm(np.diff(pos, axis=0), axis=-1).max(-1)  # (F-1,)
    assert step.max() <= data_step
