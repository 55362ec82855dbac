"""Stream snapshots: a stream rebuilt from one continues exactly, in the model and
over the bridge after a server restart."""

from __future__ import annotations

import copy
import functools
import json
import logging
import time

import numpy as np
import pytest
import torch
import zmq

from bridge import protocol as proto
from bridge.client import Client
from bridge.conventions import channel_map
from bridge.protocol import ProtocolError
from bridge.server import Server
from bridge.timeline import Timeline
from motionode.generate import MotionModel, PoseStream
from motionode.snapshots import SnapshotError

pytestmark = pytest.mark.timeout(120)

WALK = "clip:dataset-1_walk_normal_001"
RUN = "clip:dataset-1_run_normal_001"
TIRED = "clip:dataset-1_run_tired_001"
BLEND = [("prior", 3, 0.25), (RUN, 4, 0.75)]


@pytest.fixture(autouse=True)
def one_thread():
    """Exact agreement between batched and lone rows needs one torch thread (see
    motionode.rowwise), as ``motionode serve`` runs by default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def model() -> MotionModel:
    return MotionModel.load()


def round_trip(snapshot: dict) -> dict:
    return json.loads(json.dumps(snapshot, allow_nan=False))


def later_times(stream: PoseStream, end: float = 9.0) -> np.ndarray:
    """Grid and off-grid times (T,) from the stream's first answerable time."""
    first = stream.origin / stream.rate
    grid = np.arange(first, end, 1 / 60)
    off = first + np.array([0.0, 0.0123, 0.51, 1.999, 2.0001, 4.7777])
    return np.concatenate([grid, off])


# ---------------------------------------------------------------- PoseStream


# (name, what is done before the snapshot: a time asked, or a switch (source,
# seed, at), snapshot time, expected segment start step)
CASES = [
    ("mid-segment", [3.1], 3.1, 60),
    ("just after a boundary", [4.0 + 1 / 60], 4.0 + 1 / 60, 120),
    ("in a switch's cross-fade", [4.5, (TIRED, 9, 5.0), 5.2], 5.2, 150),
    ("with a pending switch", [4.5, (TIRED, 9, 5.0), 5.2, (WALK, 8, 6.5)], 5.2, 150),
]


@pytest.mark.parametrize(
    "source", ["prior", WALK, BLEND], ids=["prior", "clip", "blend"]
)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_restored_stream_gives_the_same_bits_from_its_segment_on(source, case):
    name, events, at, start = case
    original = model().open(source, seed=5)
    for event in events:
        if isinstance(event, tuple):
            assert original.switch(*event) == event[2]
        else:
            original.states(np.array([event]))

    snapshot = round_trip(original.snapshot(at))
    assert snapshot["current"]["start"] == start
    restored = PoseStream.restore(model(), snapshot)
    assert restored.origin == start and restored.source == original.source
    if name == "in a switch's cross-fade":
        assert snapshot["current"]["blend"] and snapshot["switches"][0]["step"] == 150
        assert float.fromhex(snapshot["current"]["old_tau"]) > 0
    if name == "with a pending switch":
        assert [s["step"] for s in snapshot["switches"]] == [150, 195]

    times = later_times(restored)
    poses_a, roots_a = original.states(times)
    poses_b, roots_b = restored.states(times)
    assert np.array_equal(poses_a, poses_b) and np.array_equal(roots_a, roots_b)
    # The motion changes over these times (a switch, segments), so equality
    # is not that of a still pose.
    assert np.ptp(roots_a[:, :2], axis=0).max() > 1.0
    rows_a = original.channels_at(times, continuous=False)
    assert np.array_equal(rows_a, restored.channels_at(times, continuous=False))

    # Both take a later switch alike, and still agree.
    for stream in (original, restored):
        stream.switch("prior", 11, 9.5)
    more = np.arange(9.0, 12.5, 1 / 30)
    assert np.array_equal(original.states(more)[0], restored.states(more)[0])
    with pytest.raises(ValueError, match="before .* restored snapshot"):
        restored.states(np.array([start / 30 - 0.1]))


def test_snapshots_carry_exact_floats_and_are_small():
    stream = model().open(BLEND, seed=2)
    stream.states(np.array([2.5]))
    snapshot = stream.snapshot()
    size = len(json.dumps(snapshot, separators=(",", ":")))
    assert 3000 < size < 8000
    assert snapshot["latest"] == (2.5).hex()
    assert [w for _, _, w in snapshot["components"]] == [(0.25).hex(), (0.75).hex()]


# ---------------------------------------------------------------- refusals


def other_model() -> MotionModel:
    other = copy.deepcopy(model())
    with torch.no_grad():
        next(other.net.parameters()).view(-1)[0] += 1e-9
    other._fingerprint = None
    return other


def test_a_snapshot_from_another_model_is_refused():
    snapshot = model().open(WALK, seed=1).snapshot()
    with pytest.raises(SnapshotError, match="another model") as info:
        PoseStream.restore(other_model(), snapshot)
    assert info.value.field == "snapshot.model"
    # The same model loaded again takes it.
    again = MotionModel.load()
    assert PoseStream.restore(again, snapshot).origin == 0


def test_a_snapshot_switching_to_another_clip_is_refused():
    stream = model().open("prior", seed=1)
    stream.switch(RUN, 2, 1.0)
    snapshot = stream.snapshot()
    assert set(snapshot["clips"]) == {RUN[5:]}
    other = copy.deepcopy(model())
    clip = other.seeds[RUN[5:]]
    clip.motion = clip.motion.copy()
    clip.motion[0, 0] += 1.0
    with pytest.raises(SnapshotError) as info:
        PoseStream.restore(other, snapshot)
    assert info.value.field == f"snapshot.clips.{RUN[5:]}"


def tamper(snapshot: dict, path: str, value) -> dict:
    out = copy.deepcopy(snapshot)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is KeyError:
        del node[last]
    else:
        node[last] = value
    return out


NAN_STATE = __import__("base64").b64encode(np.full(99, np.nan).tobytes()).decode()
TAMPERED = [
    ("format", "motionode-posestream/0", "snapshot.format"),
    ("latent", 47, "snapshot.latent"),
    ("device", "cuda", "snapshot.device"),
    ("solver_rate", (60.0).hex(), "snapshot.solver_rate"),
    ("segment", (0.01).hex(), "snapshot.segment"),
    ("latest", "nan", "snapshot.latest"),
    ("latest", 1.5, "snapshot.latest"),
    ("current.state", "AAAA", "snapshot.current.state"),
    ("current.state", "not base64!", "snapshot.current.state"),
    ("current.state", NAN_STATE, "snapshot.current.state"),
    ("current.offset", None, "snapshot.current.offset"),
    ("current.start", -1, "snapshot.current.start"),
    ("current.ordinal", 1.0, "snapshot.current.ordinal"),
    ("current.blend", 1, "snapshot.current.blend"),
    ("current.old_tau", "0x1p+9999", "snapshot.current.old_tau"),
    ("current.seed", KeyError, "snapshot.current"),
    ("components.0.0", "clip:nope", "snapshot.components[0][0]"),
    ("components.0.2", (0.5).hex(), "snapshot.components"),
    ("switches", [{"step": 0, "seed": 1, "components": []}], "snapshot.switches[0]"),
    ("switches", "all", "snapshot.switches"),
    ("clips", {"x": "y"}, "snapshot.clips"),
    ("extra", 1, "snapshot"),
]


@pytest.mark.parametrize("path, value, field", TAMPERED)
def test_a_damaged_snapshot_is_refused_naming_the_field(path, value, field):
    snapshot = round_trip(model().open(WALK, seed=1).snapshot())
    with pytest.raises(SnapshotError) as info:
        PoseStream.restore(model(), tamper(snapshot, path, value))
    assert info.value.field.startswith(field), info.value


def test_a_timeline_round_trips_and_refuses_damage():
    timeline = Timeline()
    timeline.set_speed(1.0 / 3.0, 2.5)
    timeline.set_speed(2.0, 0.7)
    restored = Timeline.restore(json.loads(json.dumps(timeline.snapshot(1.0))))
    times = np.linspace(1.0, 9.0, 101)
    assert np.array_equal(restored.motion(times), timeline.motion(times))
    assert restored.first == 1.0 / 3.0
    pieces = timeline.snapshot(0.0)
    for bad, field in [
        ([], "timeline"),
        ([pieces[1], pieces[0]], "timeline[1]"),
        ([[pieces[0][0], pieces[0][1], (5.0).hex()]], "timeline[0][2]"),
        ([["x", "0x0p+0", "0x1p+0"]], "timeline[0][0]"),
    ]:
        with pytest.raises(SnapshotError) as info:
            Timeline.restore(bad)
        assert info.value.field == field


# ---------------------------------------------------------------- over the bridge


def test_snapshot_op_and_open_from_a_snapshot_check_their_fields():
    with Server(model()) as server:
        client = Client(server.control_endpoint, timeout=5.0, retries=0)
        try:
            assert client.hello()["model"]["fingerprint"] == model().fingerprint()
            stream = client.open_stream(WALK, fps=30.0, seed=3)
            stream.recv(2.0)
            reply = client.request("snapshot", stream=stream.id)[0]
            assert reply["bytes"] <= proto.MAX_SNAPSHOT_BYTES
            snap = reply["snapshot"]
            assert reply["seq"] == snap["seq"] and snap["fps"] == (30.0).hex()
            open_fields = {"fps": 30.0, "snapshot": snap}
            refusals = [
                (
                    {"snapshot": snap, "fps": 30.0, "source": WALK},
                    "bad_request",
                    "source",
                ),
                ({"snapshot": [], "fps": 30.0}, "bad_request", "snapshot"),
                ({**open_fields, "mode": "pull"}, "bad_request", "snapshot"),
                ({"fps": 30.0, "first_seq": 4}, "bad_request", "first_seq"),
                ({**open_fields, "first_seq": -1}, "bad_request", "first_seq"),
                ({**open_fields, "fps": 60.0}, "bad_snapshot", "fps"),
                ({**open_fields, "start": 1.0}, "bad_snapshot", "start"),
                (
                    {"fps": 30.0, "snapshot": {**snap, "fps": "0x1p+11"}},
                    "bad_request",
                    "snapshot.fps",
                ),
                (
                    {"fps": 30.0, "snapshot": {**snap, "timeline": [["a"]]}},
                    "bad_snapshot",
                    "snapshot.timeline[0]",
                ),
                (
                    {
                        "fps": 30.0,
                        "snapshot": {
                            **snap,
                            "poses": {**snap["poses"], "model": "0" * 64},
                        },
                    },
                    "bad_snapshot",
                    "snapshot.poses.model",
                ),
            ]
            for fields, code, field in refusals:
                with pytest.raises(ProtocolError) as info:
                    client.request("open", **fields)
                assert info.value.code == code, (fields.keys(), info.value)
                assert info.value.message.startswith(field), info.value.message
            with pytest.raises(ProtocolError, match="seq") as info:
                client.request("snapshot", stream=stream.id, seq=10**6)
            pull = client.open_pull(WALK)
            with pytest.raises(ProtocolError) as info:
                client.request("snapshot", stream=pull)
            assert info.value.code == "wrong_mode"
            # A well-formed one opens, numbering frames as the snapshot's stream.
            fields = client.request("open", **open_fields, first_seq=snap["seq"] + 3)[0]
            assert fields["first_seq"] == snap["seq"] + 3 and fields["source"] == WALK
        finally:
            client.close()


def reference(
    seqs: np.ndarray, start: float, fps: float, switch: dict, speed: dict
) -> np.ndarray:
    """Frames (T, C) "<f4" an undisturbed server sends for ``seqs`` of a push
    stream of WALK, seed 12, given the replies of its switch and speed requests."""
    poses = model().open(WALK, seed=12)
    at = poses.switch(TIRED, 13, switch["motion_time"])
    assert at == switch["motion_time"]
    timeline = Timeline()
    assert timeline.set_speed(speed["at"], 2.0) == speed["motion_time"]
    motion = timeline.motion(start + seqs / fps)
    rows = poses.channels_at(motion, continuous=False)
    raw = channel_map(model().skeleton, model().spec.units_to_m, "raw", "euler")
    return np.ascontiguousarray(raw.apply(rows), dtype="<f4")


def test_an_old_stream_with_controls_survives_a_restart_exactly(caplog):
    """A push stream past 60 s of motion, switched and sped up, continues after a
    server restart with the very frames an undisturbed server would send."""
    caplog.set_level(logging.WARNING, logger="bridge.client")
    start, fps = 60.0, 30.0
    first = Server(model())
    first.start()
    control, stream_ep = first.control_endpoint, first.stream_endpoint
    context = zmq.Context()
    client = Client(control, timeout=5.0, retries=1, recover=30.0, context=context)
    try:
        push = client.open_stream(WALK, fps=fps, seed=12, start=start)
        frames = [push.recv(5.0) for _ in range(6)]
        switch = client.switch(push, TIRED, seed=13)
        frames += [push.recv(5.0) for _ in range(6)]
        speed = client.set_speed(push, 2.0)
        frames += [push.recv(5.0) for _ in range(12)]
        assert push.snapshot is not None and push.snapshot["seq"] >= 12
        assert switch["motion_time"] > 60.0 and speed["motion_time"] > 60.0

        first.stop()
        time.sleep(0.3)
        began = time.monotonic()
        with Server(model(), control=control, stream=stream_ep):
            after = [push.recv(5.0) for _ in range(45)]
            reopened = time.monotonic() - began
        assert push.restarts == 1 and push.gaps == 0
        seqs = [f.seq for f in frames + after]
        assert seqs == list(range(len(seqs)))
        assert all(f.t == start + f.seq / fps for f in after)
        assert "from its snapshot" in caplog.text
        assert "from its source's start" not in caplog.text
        assert reopened < 15.0  # not solved from time 0 (70 s of motion)

        got = np.stack([f.channels for f in frames + after])  # (T, C) float32
        want = reference(np.array(seqs, dtype=np.float64), start, fps, switch, speed)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        # The controls took effect: later frames move twice as fast in motion
        # time, and after the restart the switch is still in the motion.
        motion_end = Timeline()
        motion_end.set_speed(speed["at"], 2.0)
        assert motion_end.motion(start + seqs[-1] / fps)[0] > switch["motion_time"]
    finally:
        client.close()
        first.stop()
        context.destroy(linger=0)


def test_without_a_snapshot_the_stream_falls_back_with_a_warning(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="bridge.client")
    first = Server(model())
    first.start()
    control, stream_ep = first.control_endpoint, first.stream_endpoint
    context = zmq.Context()
    client = Client(control, timeout=5.0, retries=1, recover=30.0, context=context)
    try:
        push = client.open_stream(WALK, fps=30.0, seed=6)
        monkeypatch.setattr(push, "_renew_snapshot", lambda stale=False: None)
        before = [push.recv(5.0) for _ in range(5)]
        assert push.snapshot is None
        first.stop()
        time.sleep(0.3)
        with Server(model(), control=control, stream=stream_ep):
            after = [push.recv(5.0) for _ in range(5)]
        assert [f.seq for f in before + after] == list(range(10))
        assert push.restarts == 1 and "from its snapshot" not in caplog.text
    finally:
        client.close()
        first.stop()
        context.destroy(linger=0)
