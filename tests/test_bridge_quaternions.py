"""Quaternion poses on the wire: each joint's local rotation as a unit quaternion in
the client's axes, handedness and component order, decoded from the skeleton
description alone."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from test_bridge import RIG

from bridge.client import Client, QuaternionLayout
from bridge.conventions import QUATERNION_ORDERS, channel_map
from bridge.protocol import ProtocolError
from bridge.server import Server
from motionode.axes import PROFILES, axis_matrix
from motionode.bvh import parse_bvh
from motionode.generate import MotionModel

pytestmark = pytest.mark.timeout(60)

SOURCE = "clip:dataset-1_walk_normal_001"
TIMES = [0.0, 0.25, 1 / 3, 1.0, 2.5]
# The component order each engine's quaternion type takes.
ENGINE_ORDERS = {
    "blender": "wxyz",
    "godot": "xyzw",
    "raw": "wxyz",
    "unity": "xyzw",
    "unreal": "xyzw",
}
F32 = 2e-6  # float32 on the wire: a few units in the last place of numbers near 1


@functools.cache
def model() -> MotionModel:
    return MotionModel.load()


@pytest.fixture(scope="module")
def client():
    with Server(model()) as server, Client(server.control_endpoint) as c:
        yield c


# ------------------------------------------------ reference math, from PROTOCOL.md


def axis_rotation(axis: str, deg: np.ndarray) -> np.ndarray:
    """(T, 3, 3) R_X, R_Y or R_Z of PROTOCOL.md section 4 for angles (T,) degrees."""
    a = np.radians(np.asarray(deg, dtype=np.float64))
    c, s, o, i = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    rows = {
        "X": [[i, o, o], [o, c, -s], [o, s, c]],
        "Y": [[c, o, s], [o, i, o], [-s, o, c]],
        "Z": [[c, -s, o], [s, c, o], [o, o, i]],
    }[axis]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def euler_matrices(desc: dict, rows: np.ndarray) -> np.ndarray:
    """(T, J, 3, 3) local rotations of Euler channel rows (T, C), as PROTOCOL.md
    defines them: intrinsic, in each joint's channel order."""
    rows = np.asarray(rows, dtype=np.float64)
    out = np.tile(np.eye(3), (rows.shape[0], len(desc["names"]), 1, 1))
    for j, chans in enumerate(desc["channels"]):
        start = desc["channel_starts"][j]
        for k, name in enumerate(chans):
            if name.endswith("rotation"):
                out[:, j] = out[:, j] @ axis_rotation(name[0], rows[:, start + k])
    return out


def quaternion_matrices(wxyz: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices of quaternions (..., 4) (w, x, y, z), taken as
    they come (not normalised), acting on column vectors."""
    w, x, y, z = np.moveaxis(np.asarray(wxyz, dtype=np.float64), -1, 0)
    rows = [
        [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def split(desc: dict, values: np.ndarray) -> tuple[list, np.ndarray]:
    """Read quaternion rows (T, W) with the description alone: per joint the values
    named ``Xposition`` etc. (as {name: (T,)}), and quaternions (T, J, 4) as
    (w, x, y, z) whatever the wire order."""
    positions, quats = [], []
    for names, start in zip(desc["layout"], desc["value_starts"]):
        positions.append(
            {n: values[:, start + k] for k, n in enumerate(names) if "position" in n}
        )
        quats.append([values[:, start + names.index(f"q{a}")] for a in "wxyz"])
    return positions, np.stack([np.stack(q, axis=-1) for q in quats], axis=1)


def pull_both(client, name: str, times, seed: int = 2, **extra):
    """Euler and quaternion rows (float32 as sent) of one motion, and both
    descriptions."""
    euler_id = client.open_pull(SOURCE, seed=seed, convention=name, **extra)
    quat_id = client.open_pull(
        SOURCE, seed=seed, convention=name, rotations="quaternion", **extra
    )
    euler = client.pull(euler_id, times, continuous=False)
    quat = client.pull(quat_id, times, continuous=False)
    client.close_stream(euler_id)
    client.close_stream(quat_id)
    return (
        euler,
        quat,
        client.skeleton(name),
        client.skeleton(name, "quaternion"),
    )


# ------------------------------------------------------------------------- tests


def test_orders_are_the_engines():
    assert QUATERNION_ORDERS == ENGINE_ORDERS
    assert set(QUATERNION_ORDERS) == set(PROFILES)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_quaternions_are_the_rotations_of_the_euler_rows(client, name):
    euler, quat, euler_desc, desc = pull_both(client, name, TIMES)
    num_joints = len(desc["names"])
    positions = sum(c.endswith("position") for ch in desc["channels"] for c in ch)
    assert quat.shape == (len(TIMES), positions + 4 * num_joints) == (5, 154)

    # The description says how to read them.
    assert desc["rotations"] == "quaternion" and euler_desc["rotations"] == "euler"
    assert desc["quaternion_order"] == ENGINE_ORDERS[name]
    assert desc["num_values"] == quat.shape[1]
    assert desc["rotation_space"] == "local" and desc["quaternion_sign"] == "w>=0"
    assert desc["handedness"] == euler_desc["handedness"]
    assert desc["layout"][0] == ["Xposition", "Yposition", "Zposition"] + [
        f"q{a}" for a in ENGINE_ORDERS[name]
    ]
    assert desc["value_starts"] == [7 * j for j in range(num_joints)]
    for key in ("names", "parents", "offsets", "channels", "rotation_orders"):
        assert desc[key] == euler_desc[key]

    pos, q = split(desc, quat.astype(np.float64))  # q: (T, J, 4) w, x, y, z
    # Unit norm, and the sign rule.
    norm = np.linalg.norm(q, axis=-1)
    assert np.abs(norm - 1.0).max() < F32
    assert (q[..., 0] >= 0).all()
    assert np.abs(q[..., 1:]).max() > 0.3  # not all identity
    # The same rotation as the Euler channels, in the same axes.
    want = euler_matrices(euler_desc, euler)  # (T, J, 3, 3)
    got = quaternion_matrices(q)
    err = np.abs(got - want).max()
    assert err < F32, err
    # And, in every convention, the rig's rotation seen in the convention's axes,
    # M R M^T, whatever the handedness.
    if name != "raw":
        raw_euler, _, raw_desc, _ = pull_both(client, "raw", TIMES)
        m = axis_matrix("raw", name)
        conj = m @ euler_matrices(raw_desc, raw_euler) @ m.T
        assert np.abs(got - conj).max() < F32
        assert np.abs(got - euler_matrices(raw_desc, raw_euler)).max() > 0.5
    # Positions are the Euler rows' position channels, bit for bit.
    for j, chans in enumerate(euler_desc["channels"]):
        start = euler_desc["channel_starts"][j]
        for k, channel in enumerate(chans):
            if channel.endswith("position"):
                np.testing.assert_array_equal(pos[j][channel], euler[:, start + k])


def test_quaternion_of_each_convention_is_the_raw_one_moved(client):
    """q = (w, v) in the rig becomes (w, det(M) M v): w, and so its sign, is the
    same in every convention."""
    _, raw, _, raw_desc = pull_both(client, "raw", TIMES)
    _, raw_q = split(raw_desc, raw.astype(np.float64))
    for name in ("blender", "unity", "unreal", "godot"):
        _, quat, _, desc = pull_both(client, name, TIMES)
        _, q = split(desc, quat.astype(np.float64))
        m = axis_matrix("raw", name)
        np.testing.assert_allclose(q[..., 0], raw_q[..., 0], atol=F32)
        moved = np.linalg.det(m) * raw_q[..., 1:] @ m.T
        np.testing.assert_allclose(q[..., 1:], moved, atol=F32)


def test_euler_rows_are_unchanged_bit_for_bit(client):
    """The default still sends the rig's channels through the gather and sign
    multiply, and nothing else, for every convention."""
    rows = model().open(SOURCE, 2).channels_at(np.array(TIMES), continuous=False)
    for name in sorted(PROFILES):
        convert = channel_map(model().skeleton, model().spec.units_to_m, name)
        want = rows if name == "raw" else rows[:, convert.index] * convert.scale
        stream = client.open_pull(SOURCE, seed=2, convention=name)
        got = client.pull(stream, TIMES, continuous=False)
        client.close_stream(stream)
        np.testing.assert_array_equal(got, want.astype("<f4"))


def test_client_decodes_joints(client):
    stream = client.open_pull(
        SOURCE, seed=4, convention="unity", rotations="quaternion"
    )
    rows = client.pull(stream, TIMES, continuous=False)
    joints = client.pull_joints(stream, TIMES, continuous=False)
    client.close_stream(stream)
    desc = client.skeleton("unity", "quaternion")
    num_joints = len(desc["names"])
    assert joints.translations.shape == (len(TIMES), num_joints, 3)
    assert joints.quaternions.shape == (len(TIMES), num_joints, 4)
    assert joints.translation_rates is None and joints.quaternion_rates is None
    pos, q = split(desc, rows)
    xyzw = q[..., [1, 2, 3, 0]]  # Unity's order
    np.testing.assert_array_equal(joints.quaternions, xyzw)
    for j in range(num_joints):
        for axis, name in enumerate(("Xposition", "Yposition", "Zposition")):
            np.testing.assert_array_equal(joints.translations[:, j, axis], pos[j][name])
    # An Euler pull stream has no joints to decode.
    euler = client.open_pull(SOURCE, seed=4, convention="unity")
    with pytest.raises(ValueError, match="quaternion"):
        client.pull_joints(euler, TIMES)
    client.close_stream(euler)


def test_layout_of_a_sparse_rig():
    """Joints without rotation channels carry the identity, joints with fewer than
    three rotate about theirs alone, and positions come first whatever the channel
    order."""
    rig = parse_bvh(
        """HIERARCHY
ROOT Hips
{
  OFFSET 0 90 0
  CHANNELS 6 Zrotation Xrotation Yrotation Xposition Yposition Zposition
  JOINT Chest
  {
    OFFSET 0 10 0
    CHANNELS 0
    JOINT Neck
    {
      OFFSET 0 5 0
      CHANNELS 2 Yrotation Xrotation
      End Site
      {
        OFFSET 0 20 0
      }
    }
  }
}
MOTION
Frames: 1
Frame Time: 0.0333333
0 0 0 0 0 0 0 0
""",
        "rig",
    ).skeleton
    rows = np.array([[30.0, -20.0, 170.0, 1.0, 90.0, -3.0, 60.0, -45.0]])  # (1, 8)
    for name in sorted(PROFILES):
        euler = channel_map(rig, 0.01, name)
        quat = channel_map(rig, 0.01, name, "quaternion")
        desc = quat.skeleton
        assert quat.width == desc["num_values"] == 3 + 3 * 4
        order = ENGINE_ORDERS[name]
        assert desc["layout"] == [
            ["Xposition", "Yposition", "Zposition"] + [f"q{a}" for a in order],
            [f"q{a}" for a in order],
            [f"q{a}" for a in order],
        ]
        assert desc["value_starts"] == [0, 7, 11]
        values = quat.apply(rows)
        pos, q = split(desc, values)
        np.testing.assert_array_equal(q[0, 1], [1.0, 0.0, 0.0, 0.0])
        converted = euler.apply(rows)
        want = euler_matrices(euler.skeleton, converted)[0]  # (J, 3, 3)
        assert np.abs(quaternion_matrices(q[0]) - want).max() < 1e-14
        start = euler.skeleton["channel_starts"][0]
        chans = euler.skeleton["channels"][0]
        for channel, value in pos[0].items():
            assert value[0] == converted[0, start + chans.index(channel)]


def test_sign_rule_makes_quaternions_a_function_of_the_pose():
    """Euler triples of one rotation (a 360-degree turn apart, or the other
    solution) give the very same quaternion, with w >= 0."""
    sk = model().skeleton
    quat = channel_map(sk, model().spec.units_to_m, "unreal", "quaternion")
    rows = model().open(SOURCE, 2).channels_at(np.array(TIMES), continuous=False)
    turned = rows.copy()
    other = rows.copy()
    for j, chans in enumerate(sk.channels):
        rot = [sk.channel_starts()[j] + k for k, c in enumerate(chans) if "rot" in c]
        turned[:, rot[0]] += 360.0
        turned[:, rot[2]] -= 720.0
        # (a, b, c) and (a + 180, 180 - b, c + 180) are one rotation.
        other[:, rot] = other[:, rot] + [180.0, 0.0, 180.0]
        other[:, rot[1]] = 180.0 - other[:, rot[1]]
    desc = quat.skeleton
    _, q = split(desc, quat.apply(rows))
    for variant in (turned, other):
        _, q2 = split(desc, quat.apply(variant))
        assert np.abs(q2 - q).max() < 1e-12
    assert (q[..., 0] >= 0).all()
    # The plain products of the turned triples have the other sign: the rule is
    # what makes them agree.
    from motionode.rotations import euler_to_quaternion

    for j in range(sk.num_joints):
        rot = [
            sk.channel_starts()[j] + k
            for k, c in enumerate(sk.channels[j])
            if "rot" in c
        ]
        order = sk.rotation_order(j)
        plain = euler_to_quaternion(np.radians(rows[:, rot]), order)
        plain_turned = euler_to_quaternion(np.radians(turned[:, rot]), order)
        np.testing.assert_allclose(plain_turned, -plain, atol=1e-12)


def test_push_streams_send_quaternions_equal_across_rates(client):
    with (
        client.open_stream(
            SOURCE, fps=30.0, seed=2, convention="unity", rotations="quaternion"
        ) as a,
        client.open_stream(
            SOURCE, fps=20.0, seed=2, convention="unity", rotations="quaternion"
        ) as b,
    ):
        frames_a = [a.recv(3.0) for _ in range(7)]  # t = 0 .. 0.2
        frames_b = [b.recv(3.0) for _ in range(5)]  # t = 0 .. 0.2
    assert a.info["rotations"] == "quaternion" and a.info["num_channels"] == 154
    assert a.skeleton["quaternion_order"] == "xyzw"
    assert a.layout is not None and a.layout.width == 154
    by_time = {f.t: f for f in frames_a}
    common = [f for f in frames_b if f.t in by_time]
    assert [f.t for f in common] == [0.0, 0.1, 0.2]
    for f in common:
        np.testing.assert_array_equal(f.channels, by_time[f.t].channels)
    # Decoded per joint, and the same as a pull at those times.
    frame = frames_a[4]
    assert frame.joints.quaternions.shape == (22, 4)
    assert frame.joints.translations.shape == (22, 3)
    pull = client.open_pull(SOURCE, seed=2, convention="unity", rotations="quaternion")
    times = [f.t for f in frames_a]
    rows = client.pull(pull, times, continuous=False)
    client.close_stream(pull)
    np.testing.assert_array_equal(np.stack([f.channels for f in frames_a]), rows)
    q = frame.joints.quaternions.astype(np.float64)
    assert np.abs(np.linalg.norm(q, axis=-1) - 1).max() < F32
    assert (q[:, 3] >= 0).all()  # w, last for Unity


def test_continuous_pulls_give_the_same_quaternions(client):
    """Unwrapped and principal Euler angles are the same rotations: the quaternion
    rows agree up to rounding."""
    stream = client.open_pull(
        SOURCE, seed=2, convention="godot", rotations="quaternion"
    )
    times = np.linspace(0.0, 3.0, 40)
    smooth = client.pull(stream, times, continuous=True)
    principal = client.pull(stream, times, continuous=False)
    client.close_stream(stream)
    desc = client.skeleton("godot", "quaternion")
    pos_s, q_s = split(desc, smooth.astype(np.float64))
    pos_p, q_p = split(desc, principal.astype(np.float64))
    assert np.abs(q_s - q_p).max() < 2 * F32
    for a, b in zip(pos_s, pos_p):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize(
    "value", ["quat", "Quaternion", "EULER", "", True, 1, None, ["quaternion"]]
)
def test_bad_rotations_are_refused(client, value):
    for op, fields in (("open", {"fps": 30, "rotations": value}), ("skeleton", {})):
        fields = {**fields, "rotations": value}
        with pytest.raises(ProtocolError) as exc:
            client.request(op, **fields)
        assert exc.value.code == "bad_request"
        assert exc.value.message.startswith("rotations: expected 'euler' or ")
        assert "'quaternion'" in exc.value.message


def test_quaternion_rates_are_exact_derivatives(client):
    """The rates sent are the analytic derivative of the quaternions; a central
    difference of pulled quaternions (1 ms either side) agrees to its own error."""
    stream = client.open_pull(
        SOURCE, seed=3, convention="unreal", rotations="quaternion", velocities=True
    )
    h = 1e-3
    centres = np.array([0.3, 0.75, 1.4, 2.6])
    times = np.concatenate([centres - h, centres, centres + h])
    joints = client.pull_joints(stream, times, continuous=False)
    client.close_stream(stream)
    n = len(centres)
    q = joints.quaternions.astype(np.float64)  # (3n, J, 4), x, y, z, w
    dq = joints.quaternion_rates.astype(np.float64)
    behind, here, ahead = q[:n], q[n : 2 * n], q[2 * n :]
    assert (np.abs(here[..., 3]) > 1e-3).all()  # no sign flip within +-h
    central = (ahead - behind) / (2 * h)  # (n, J, 4)
    exact = dq[n : 2 * n]
    scale = np.abs(exact).max()
    assert scale > 0.5  # the joints do turn
    err = np.abs(central - exact).max()
    assert err < 5e-4 * scale, (err, scale)
    # A unit quaternion's derivative is orthogonal to it.
    assert np.abs(np.sum(here * exact, axis=-1)).max() < 1e-5 * scale
    # Translations' rates are the position channels' rates.
    central_t = (joints.translations[2 * n :] - joints.translations[:n]) / (2 * h)
    rate_t = joints.translation_rates[n : 2 * n]
    assert np.abs(central_t - rate_t).max() < 1e-2 * np.abs(rate_t).max()


def test_push_frames_carry_quaternion_rates(client):
    with client.open_stream(
        SOURCE,
        fps=30.0,
        seed=3,
        convention="blender",
        rotations="quaternion",
        velocities=True,
    ) as stream:
        frames = [stream.recv(3.0) for _ in range(4)]
    assert frames[0].channels.shape == frames[0].velocities.shape == (154,)
    pull = client.open_pull(
        SOURCE, seed=3, convention="blender", rotations="quaternion", velocities=True
    )
    rows = client.pull(pull, [f.t for f in frames], continuous=False)  # (4, 308)
    client.close_stream(pull)
    got = np.stack([np.concatenate([f.channels, f.velocities]) for f in frames])
    np.testing.assert_array_equal(got, rows)
    layout = QuaternionLayout.from_skeleton(stream.skeleton)
    decoded = layout.decode(rows[:, :154], rows[:, 154:])
    np.testing.assert_array_equal(
        np.stack([f.joints.quaternion_rates for f in frames]), decoded.quaternion_rates
    )
    assert np.abs(decoded.quaternion_rates).max() > 0.5


def test_protocol_document_example_matches_the_server():
    """The quaternion example of PROTOCOL.md section 4 is what the server sends."""
    text = " ".join(
        (Path(__file__).parents[1] / "bridge" / "PROTOCOL.md").read_text().split()
    )
    rig = parse_bvh(RIG, "rig").skeleton
    pose = np.array([[1.0, 90.0, -2.0, 90.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    for name, wrote in (
        ("raw", "[1, 90, -2, 0.7071068, 0, 0, 0.7071068, 1, 0, 0, 0]"),
        ("unity", "[-0.01, 0.9, -0.02, 0, 0, -0.7071068, 0.7071068, 0, 0, 0, 1]"),
    ):
        assert f"`{wrote}`" in text
        got = channel_map(rig, 0.01, name, "quaternion").apply(pose)[0]
        np.testing.assert_allclose(got, json.loads(wrote), atol=5e-8)
    desc = channel_map(rig, 0.01, "unity", "quaternion").skeleton
    assert f"`layout` `{json.dumps(desc['layout'])}`" in text
    assert f"`value_starts` `{desc['value_starts']}`" in text
    assert f"`num_values` {desc['num_values']}" in text


def test_recording_sends_quaternions(client):
    with client.open_recording(
        SOURCE, fps=24.0, seed=5, convention="godot", rotations="quaternion"
    ) as rec:
        frames = [rec.recv(3.0) for _ in range(6)]
    assert rec.info["rotations"] == "quaternion" and rec.info["mode"] == "record"
    pull = client.open_pull(SOURCE, seed=5, convention="godot", rotations="quaternion")
    rows = client.pull(pull, [f.t for f in frames], continuous=False)
    client.close_stream(pull)
    np.testing.assert_array_equal(np.stack([f.channels for f in frames]), rows)
    assert all(f.joints.quaternions.shape == (22, 4) for f in frames)
