"""Poses served in the convention each client names: the same body, in the
client's axes, handedness and unit."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from bridge import protocol as proto
from bridge.client import Client
from bridge.protocol import ProtocolError
from bridge.server import Server
from motionode.axes import PROFILES, axis_matrix
from motionode.bvh import Clip, Skeleton
from motionode.generate import MotionModel

pytestmark = pytest.mark.timeout(60)

SOURCE = "clip:dataset-1_walk_normal_001"
TIMES = [0.0, 0.25, 1 / 3, 1.0, 2.5]


@functools.cache
def model() -> MotionModel:
    return MotionModel.load()


@pytest.fixture(scope="module")
def client():
    with Server(model()) as server, Client(server.control_endpoint) as c:
        yield c


def world_m(desc: dict, rows: np.ndarray) -> np.ndarray:
    """(T, J, 3) joint positions in metres from a description and its rows."""
    clip = Clip(Skeleton.from_dict(desc), np.asarray(rows, dtype=np.float64), 1.0)
    return clip.world_positions() * desc["units_to_m"]


def test_names_match_the_profiles():
    assert proto.CONVENTIONS == tuple(sorted(PROFILES))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_pulled_poses_are_the_same_body_in_the_clients_axes(client, name):
    desc = client.skeleton(name)
    assert desc["convention"] == name
    profile = PROFILES[name]
    assert desc["up_axis"] == profile.up[1] and desc["forward_axis"] == profile.forward
    assert desc["handedness"] == ("right" if profile.right_handed else "left")
    unit = profile.unit_m or model().spec.units_to_m
    assert desc["units_to_m"] == unit

    stream = client.open_pull(SOURCE, seed=2, convention=name)
    rows = client.pull(stream, TIMES)
    client.close_stream(stream)
    got = world_m(desc, rows)  # (T, J, 3) in the client's axes
    raw = model().open(SOURCE, 2).positions_at(np.array(TIMES))  # rig axes, metres
    want = raw @ axis_matrix("raw", name).T
    assert np.abs(got - want).max() < 2e-5  # float32 on the wire
    if name != "raw":
        assert np.abs(got - raw).max() > 0.1  # the axes did change


def test_push_stream_carries_its_convention(client):
    with client.open_stream(SOURCE, fps=30.0, seed=2, convention="unreal") as stream:
        frames = [stream.recv(2.0) for _ in range(4)]
    desc = stream.skeleton
    assert desc["convention"] == "unreal" and desc["units_to_m"] == 0.01
    assert stream.info["convention"] == "unreal"
    times = np.array([f.t for f in frames])
    got = world_m(desc, np.stack([f.channels for f in frames]))
    raw = model().open(SOURCE, 2).positions_at(times)
    assert np.abs(got - raw @ axis_matrix("raw", "unreal").T).max() < 2e-5


def test_unknown_convention_is_refused(client):
    with pytest.raises(ProtocolError, match="convention"):
        client.open_pull(SOURCE, convention="maya")
    with pytest.raises(ProtocolError, match="convention"):
        client.skeleton("Unity")


def test_velocities_convert_with_their_channels(client):
    from bridge.conventions import channel_map

    convert = channel_map(model().skeleton, model().spec.units_to_m, "unity")
    raw_id = client.open_pull(SOURCE, seed=2, velocities=True)
    unity_id = client.open_pull(SOURCE, seed=2, velocities=True, convention="unity")
    raw = client.pull(raw_id, TIMES).astype(np.float64)  # (T, 2C)
    unity = client.pull(unity_id, TIMES).astype(np.float64)
    c = model().skeleton.num_channels
    assert unity.shape == (len(TIMES), 2 * c)
    for half in (slice(0, c), slice(c, 2 * c)):
        want = convert.apply(raw[:, half])
        assert np.abs(unity[:, half] - want).max() <= 1e-4 * (1 + np.abs(want).max())
    assert np.abs(raw[:, c:]).max() > 1.0  # the motion does move
