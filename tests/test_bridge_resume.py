"""Clients that reconnect, and clients that outlive a server restart."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import zmq

from bridge.client import Client
from bridge.server import Server
from motionode.generate import MotionModel

pytestmark = pytest.mark.timeout(90)

SOURCE = "clip:dataset-1_walk_normal_001"


@functools.cache
def model() -> MotionModel:
    return MotionModel.load()


def expected(times: np.ndarray, seed: int) -> np.ndarray:
    rows = model().open(SOURCE, seed).channels_at(times, continuous=False)
    return rows.astype("<f4")


def test_a_client_that_reconnects_takes_up_its_streams():
    with Server(model(), lease=10.0) as server:
        first = Client(server.control_endpoint)
        push = first.open_stream(SOURCE, fps=30.0, seed=4)
        pull = first.open_pull(SOURCE, seed=5)
        seen = [push.recv(2.0) for _ in range(5)]
        routing_id = first.routing_id
        first.close()  # the process goes away without closing its streams

        again = Client(server.control_endpoint, routing_id=routing_id)
        listed = {s["stream"]: s for s in again.streams()}
        assert set(listed) == {push.id, pull}
        resumed = again.resume(listed[push.id])
        frames = [resumed.recv(2.0) for _ in range(5)]
        assert frames[0].seq > seen[-1].seq  # the same stream, still running
        assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + 5))
        times = np.array([f.t for f in frames])
        assert np.array_equal(
            np.stack([f.channels for f in frames]), expected(times, 4)
        )
        assert again.resume(listed[pull]) == pull
        rows = again.pull(pull, [0.5], continuous=False)
        assert np.array_equal(rows, expected(np.array([0.5]), 5))
        # A client with another routing id sees none of them.
        stranger = Client(server.control_endpoint)
        assert stranger.streams() == []
        stranger.close()
        again.close()


def test_streams_survive_a_server_restart_and_continue_the_same_motion():
    first = Server(model())
    first.start()
    control, stream_ep = first.control_endpoint, first.stream_endpoint
    context = zmq.Context()
    client = Client(control, timeout=1.0, retries=1, recover=30.0, context=context)
    try:
        push = client.open_stream(SOURCE, fps=30.0, seed=6)
        pull = client.open_pull(SOURCE, seed=7)
        before = [push.recv(2.0) for _ in range(10)]
        assert np.array_equal(client.pull(pull, [1.0], False), expected([1.0], 7))

        first.stop()
        time.sleep(0.5)
        second = Server(model(), control=control, stream=stream_ep)
        second.start()
        try:
            # Frames the first server sent before it stopped come first.
            after = []
            while push.restarts == 0 and len(after) < 100:
                after.append(push.recv(5.0))
            after += [push.recv(5.0) for _ in range(10)]
            assert push.restarts == 1 and push.ended is None
            # Numbering and times go on from where they were, nothing skipped.
            seqs = [f.seq for f in before + after]
            assert seqs == list(range(len(seqs))) and push.gaps == 0
            assert all(f.t == f.seq / 30.0 for f in after)
            # The same motion as if the server had never stopped.
            times = np.array([f.t for f in after])
            got = np.stack([f.channels for f in after])
            assert np.abs(got - expected(times, 6)).max() < 1e-3
            # The pull stream is opened again behind the scenes, and reaches as
            # far as it had (past the 30 s a new stream may jump at once).
            rows = client.pull(pull, [1.5, 45.0], False)
            assert np.array_equal(rows, expected(np.array([1.5, 45.0]), 7))
        finally:
            client.close()
            second.stop()
    finally:
        first.stop()
        context.destroy(linger=0)


def test_without_recovery_a_restart_ends_the_stream():
    from bridge.client import StreamEnded

    with Server(model()) as server:
        client = Client(server.control_endpoint, timeout=1.0)
        push = client.open_stream(SOURCE, fps=30.0)
        push.recv(2.0)
        server.stop()
        with pytest.raises(StreamEnded, match="server_stopped"):
            while True:
                push.recv(2.0)
        client.close()


def test_a_server_that_vanished_without_a_word_is_noticed(monkeypatch):
    """No end message (a crash): the stream notices the silence and reopens."""
    first = Server(model())
    monkeypatch.setattr(first, "_finish", lambda xpub, stream: None)
    first.start()
    control, stream_ep = first.control_endpoint, first.stream_endpoint
    client = Client(control, timeout=1.0, retries=0, recover=30.0)
    try:
        push = client.open_stream(SOURCE, fps=30.0, seed=8)
        before = [push.recv(2.0) for _ in range(3)]
        first.stop()
        with Server(model(), control=control, stream=stream_ep):
            after = []  # frames sent before the stop come first
            while push.restarts == 0 and len(after) < 100:
                after.append(push.recv(1.0))
            after += [push.recv(1.0) for _ in range(3)]
        seqs = [f.seq for f in before + after]
        assert push.restarts == 1 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        client.close()
        first.stop()
