"""Many streams solved together give each stream exactly its own poses."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bridge.client import Client, StreamEnded
from bridge.server import Server
from motionode.generate import MotionModel, channels_together, states_together
from motionode.model import odeint_grid, rk4_step
from motionode.rowwise import ROW_BLOCK, block_count, pad_rows, run_rows

WALK = "clip:dataset-1_walk_normal_001"
RUN = "clip:dataset-1_run_normal_001"


@pytest.fixture(scope="module")
def model() -> MotionModel:
    return MotionModel.load()


@pytest.mark.parametrize("count", [1, 3, ROW_BLOCK, ROW_BLOCK + 1, 100, 513])
def test_network_rows_do_not_depend_on_their_batch(model, count):
    torch.manual_seed(count)
    z = torch.randn(count, model.net.config.latent_dim, dtype=torch.float64)
    for fn in (model.decode_norm, model.dynamics):
        together = fn(z)
        alone = torch.cat([fn(z[i])[None] for i in range(count)])
        assert torch.equal(together, alone)
        assert torch.equal(fn(z.flip(0)), together.flip(0))


def test_padding_repeats_the_first_row():
    x = torch.arange(6.0).reshape(3, 2)
    padded = pad_rows(x)
    assert padded.shape == (ROW_BLOCK, 2) and block_count(0) == ROW_BLOCK
    assert torch.equal(padded[:3], x) and torch.equal(padded[3:], x[:1].expand(13, 2))
    assert block_count(ROW_BLOCK + 1) == 2 * ROW_BLOCK
    assert run_rows(lambda r: r * 2, x).shape == (3, 2)


def test_rk4_step_is_the_step_of_the_grid_solver(model):
    torch.manual_seed(0)
    z = torch.randn(5, model.net.config.latent_dim, dtype=torch.float64)
    f = model.net.dynamics
    rate = model.net.config.solver_rate
    # Rows at different times and spans: a whole grid step and shortened ones.
    starts = torch.tensor([0.0, 0.2, 1 / 30, 3.0, 7.5], dtype=torch.float64)
    spans = torch.tensor([1 / 30, 1 / 60, 1 / 144, 0.001, 1 / 30], dtype=torch.float64)
    ours = rk4_step(f, starts, starts + spans, z)
    for i in range(5):
        times = torch.stack([starts[i], starts[i] + spans[i]])
        theirs = odeint_grid(f, z[i : i + 1], times, rate)[-1, 0]
        torch.testing.assert_close(ours[i], theirs, rtol=0, atol=1e-14)


def _streams(model):
    """Streams of every kind: sources, blends, seeds, segment lengths, a switch."""
    blend = [("prior", 2, 0.5), (WALK, 0, 0.5)]
    made = [
        model.open("prior", seed=1),
        model.open("prior", seed=1),  # the same motion as the first
        model.open(WALK, seed=0),
        model.open(RUN, seed=3, segment=1.0),
        model.open(blend, seed=0),
        model.open("prior", seed=7, temperature=0.5),
    ]
    made[2].switch(RUN, seed=4, at=1.3)
    return made


def test_streams_advanced_together_equal_each_alone(model):
    """Frame by frame at their own rates, as a server advances them."""
    rates = [24.0, 60.0, 144.0, 59.94, 30.0, 120.0]
    together = _streams(model)
    frames = [[] for _ in together]
    for tick in range(int(2.6 * 60)):
        requests = []
        for stream, fps, out in zip(together, rates, frames):
            due = np.arange(len(out), np.floor(tick / 60 * fps + 1e-9) + 1)  # seqs
            requests.append((stream, due / fps))
        for out, rows in zip(frames, channels_together(requests)):
            out.extend(rows)

    for i, (fps, rows) in enumerate(zip(rates, frames)):
        alone = _streams(model)[i]
        times = np.arange(len(rows)) / fps
        assert len(rows) >= 2.5 * fps
        assert np.array_equal(np.array(rows), alone.channels_at(times, False)), i
    # The first two are one motion at 24 and 60 fps: equal every 1/12 s.
    shared = np.array(frames[0][::2]), np.array(frames[1][::5])
    n = min(len(shared[0]), len(shared[1]))
    assert n > 25 and np.array_equal(shared[0][:n], shared[1][:n])


def test_same_seed_same_bits_at_shared_times(model):
    a, b = model.open("prior", seed=1), model.open("prior", seed=1)
    t24, t60 = np.arange(61) / 24, np.arange(151) / 60
    rows24, rows60 = channels_together([(a, t24), (b, t60)])
    # 1/24 and 1/60 s grids meet every 1/12 s.
    assert np.array_equal(rows24[::2], rows60[::5])


def test_together_refuses_what_it_cannot_do(model):
    stream = model.open("prior")
    with pytest.raises(ValueError, match="once"):
        states_together([(stream, [0.1]), (stream, [0.2])])
    other = MotionModel.load()
    with pytest.raises(ValueError, match="models"):
        states_together([(stream, [0.1]), (other.open("prior"), [0.2])])
    with pytest.raises(ValueError, match="finite"):
        states_together([(stream, [np.nan])])
    assert states_together([]) == [] and channels_together([]) == []


def _frames(stream, count: int) -> list:
    return [stream.recv(5.0) for _ in range(count)]


@pytest.mark.timeout(120)
def test_a_server_full_of_streams_sends_each_its_own_poses(model):
    """Push streams at several rates, solved together by the server, carry what
    each stream computed alone gives, to the last bit of the float32 payload."""
    rates = [24.0, 60.0, 144.0, 59.94, 30.0, 60.0, 24.0, 144.0]
    sources = ["prior", WALK, "prior", RUN, "prior", WALK, RUN, "prior"]
    with Server(model) as server, Client(server.control_endpoint, timeout=10) as c:
        streams = [
            c.open_stream(src, fps=fps, seed=i % 3)
            for i, (src, fps) in enumerate(zip(sources, rates))
        ]
        pulled = c.open_pull(WALK, seed=1)
        c.pull(pulled, [0.25, 0.5])  # a pull stream beside them
        received = [_frames(s, int(fps * 0.75)) for s, fps in zip(streams, rates)]
    for i, (frames, fps, src) in enumerate(zip(received, rates, sources)):
        seqs = [f.seq for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), i
        times = np.array([f.t for f in frames])
        np.testing.assert_array_equal(times, np.array(seqs) / fps)
        alone = model.open(src, seed=i % 3).channels_at(times, continuous=False)
        sent = np.array([f.channels for f in frames])
        assert np.array_equal(sent, alone.astype(np.float32)), i


@pytest.mark.timeout(60)
def test_a_failing_stream_ends_alone(model):
    """A stream whose poses cannot be computed ends with an error; the streams
    solved in the same batches go on without a gap."""

    with Server(model) as server, Client(server.control_endpoint, timeout=10) as c:
        good = [c.open_stream("prior", fps=60, seed=i) for i in range(3)]
        bad = c.open_stream("prior", fps=60, seed=9)
        poses = server._streams[bad.id].poses

        def broken(times):
            times = np.asarray(times, dtype=np.float64).reshape(-1)
            if (times > 0.3).any():
                raise FloatingPointError("the motion blew up")
            return times

        poses._check_times = broken
        with pytest.raises(StreamEnded) as ended:
            while True:
                bad.recv(5.0)
        assert ended.value.reason == "error"
        started = time.monotonic()
        for stream in good:
            frames = _frames(stream, 60)
            seqs = [f.seq for f in frames]
            assert seqs == list(range(seqs[0], seqs[0] + 60)) and stream.gaps == 0
        assert time.monotonic() - started < 5.0


@pytest.mark.timeout(60)
def test_a_stream_far_apart_in_motion_keeps_its_rate(model):
    """2x speed at 30 fps puts 0.067 s of motion between frames: such a stream is
    solved on its own, in slices, and still gets every frame on time."""
    with Server(model) as server, Client(server.control_endpoint, timeout=10) as c:
        stream = c.open_stream("prior", fps=30, seed=4)
        c.set_speed(stream, 2.0)
        first = stream.recv(5.0)
        began = time.monotonic()
        frames = [stream.recv(2.0) for _ in range(60)]
        took = time.monotonic() - began
    seqs = [f.seq for f in frames]
    assert seqs == list(range(first.seq + 1, first.seq + 61))
    assert took < 2.5  # 60 frames at 30 fps: 2 s


@pytest.mark.timeout(60)
def test_a_stream_opened_from_a_snapshot_starts_at_once(model):
    """Frame numbers go on from the snapshot's; the first of them falls due when
    the stream starts, not first_seq / fps later."""
    with Server(model) as server, Client(server.control_endpoint, timeout=10) as c:
        old = c.open_stream("prior", fps=60, seed=5)
        for _ in range(150):
            old.recv(5.0)
        snap = c.request("snapshot", stream=old.id)[0]["snapshot"]
        c.close_stream(old)
        began = time.monotonic()
        reply = c.request("open", fps=60.0, snapshot=snap, first_seq=snap["seq"])[0]
        new = c.resume(reply)
        frame = new.recv(5.0)
        assert time.monotonic() - began < 1.0
        assert frame.seq == snap["seq"] > 140
        alone = model.open("prior", seed=5).channels_at([frame.t], continuous=False)
        assert np.array_equal(frame.channels, alone[0].astype(np.float32))


def test_switches_waiting_to_start_are_bounded(model):
    from motionode.generate import MAX_WAITING_SWITCHES

    stream = model.open("prior")
    stream.channels_at([0.1])
    for i in range(MAX_WAITING_SWITCHES):
        stream.switch("prior", seed=i, at=0.2)
    with pytest.raises(ValueError, match="waiting"):
        stream.switch("prior", seed=99, at=0.2)
    stream.channels_at([60.0])  # past them all
    assert stream.switch("prior", seed=99, at=60.5) > 60.0
