"""Euler angles, the 6D form, and forward kinematics in numpy and torch."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from motionode.bvh import read_bvh
from motionode.kinematics import forward_kinematics, forward_kinematics_torch
from motionode.rotations import (
    EULER_ORDERS,
    canonical_quaternion_sign,
    euler_to_matrix,
    euler_to_quaternion,
    euler_to_quaternion_rate,
    matrix_to_euler,
    matrix_to_sixd,
    quaternion_multiply,
    quaternion_to_matrix,
    sixd_to_matrix,
    unwrap_euler,
)
from motionode.torchpose import sixd_to_matrix_torch

CLIPS_DIR = Path(__file__).parents[2] / "shared" / "data" / "bvh"


def rx(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def ry(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rz(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


AXIS = {"X": rx, "Y": ry, "Z": rz}


def random_rotations(n: int, seed: int) -> np.ndarray:
    """(n, 3, 3) rotations from normalised random quaternions."""
    q = np.random.default_rng(seed).normal(size=(n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack(
        [
            np.stack(
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1
            ),
            np.stack(
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1
            ),
            np.stack(
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1
            ),
        ],
        axis=1,
    )  # (n, 3, 3)


# ------------------------------------------------------------------------- Euler


@pytest.mark.parametrize("order", EULER_ORDERS)
def test_euler_to_matrix_is_intrinsic_product(order):
    angles_deg = (30.0, -50.0, 75.0)
    want = (
        AXIS[order[0]](angles_deg[0])
        @ AXIS[order[1]](angles_deg[1])
        @ AXIS[order[2]](angles_deg[2])
    )
    got = euler_to_matrix(np.radians(angles_deg), order)
    np.testing.assert_allclose(got, want, atol=1e-15)


def test_euler_to_matrix_hand_values():
    # ZXY with Z 90 then X 90: +Y goes to +Z under Rx(90), then Rz(90) keeps +Z.
    m = euler_to_matrix(np.radians([90.0, 90.0, 0.0]), "ZXY")
    np.testing.assert_allclose(m @ [0, 1, 0], [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(m @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    # Lower-case orders are accepted; others name every valid order.
    np.testing.assert_array_equal(
        euler_to_matrix([0.1, 0.2, 0.3], "zxy"), euler_to_matrix([0.1, 0.2, 0.3], "ZXY")
    )
    with pytest.raises(ValueError, match="XYZ, XZY, YXZ, YZX, ZXY, ZYX, got 'XYX'"):
        euler_to_matrix([0.0, 0.0, 0.0], "XYX")


@pytest.mark.parametrize("order", EULER_ORDERS)
def test_euler_round_trip(order):
    rng = np.random.default_rng(3)
    # Inside the principal range the angles themselves come back.
    angles = np.stack(
        [
            rng.uniform(-np.pi, np.pi, 500),
            rng.uniform(-np.pi / 2 + 1e-3, np.pi / 2 - 1e-3, 500),
            rng.uniform(-np.pi, np.pi, 500),
        ],
        axis=1,
    )
    back = matrix_to_euler(euler_to_matrix(angles, order), order)
    np.testing.assert_allclose(back, angles, atol=1e-9)

    # Any rotation comes back as the same matrix, middle angle within +-90 degrees.
    mats = random_rotations(500, seed=4)
    euler = matrix_to_euler(mats, order)
    assert np.all(np.abs(euler[:, 1]) <= np.pi / 2)
    np.testing.assert_allclose(euler_to_matrix(euler, order), mats, atol=1e-12)


@pytest.mark.parametrize("order", EULER_ORDERS)
@pytest.mark.parametrize("middle_deg", [90.0, -90.0, 90.0 - 1e-7, -90.0 + 1e-9])
def test_euler_round_trip_at_gimbal_lock(order, middle_deg):
    rng = np.random.default_rng(5)
    angles = np.stack(
        [
            rng.uniform(-np.pi, np.pi, 200),
            np.full(200, math.radians(middle_deg)),
            rng.uniform(-np.pi, np.pi, 200),
        ],
        axis=1,
    )
    mats = euler_to_matrix(angles, order)
    euler = matrix_to_euler(mats, order)
    assert np.all(np.isfinite(euler))
    np.testing.assert_allclose(euler[:, 1], angles[:, 1], atol=1e-6)
    # Within 1e-8 of the pole the middle angle rounds onto it (arcsin of ~1), which
    # costs up to about 2e-9 in the matrix; elsewhere the round trip is ~1e-15.
    np.testing.assert_allclose(euler_to_matrix(euler, order), mats, atol=5e-9)
    if abs(middle_deg) == 90.0:
        np.testing.assert_array_equal(euler[:, 2], 0.0)  # the first angle takes it all


def test_matrix_to_euler_tolerates_rounding_past_one():
    m = euler_to_matrix(np.radians([10.0, 90.0, 0.0]), "XYZ") * (1 + 1e-15)
    euler = matrix_to_euler(m, "XYZ")
    assert np.all(np.isfinite(euler))
    assert euler[1] == pytest.approx(np.pi / 2)


# ------------------------------------------------------------------------ unwrap


@pytest.mark.parametrize("order", EULER_ORDERS)
def test_unwrap_keeps_angles_continuous(order):
    # A spin on every axis at once, sampled finely, several full turns long.
    t = np.linspace(0, 1, 400)[:, None]
    path = np.concatenate([4 * np.pi * t, 0.8 * np.sin(6 * t), -3 * np.pi * t], axis=1)
    mats = euler_to_matrix(path, order)
    raw = matrix_to_euler(mats, order)
    assert np.abs(np.diff(raw, axis=0)).max() > np.pi  # the raw form does wrap
    smooth = unwrap_euler(raw, order)
    assert np.abs(np.diff(smooth, axis=0)).max() <= np.pi
    np.testing.assert_allclose(smooth, path, atol=1e-9)
    np.testing.assert_allclose(euler_to_matrix(smooth, order), mats, atol=1e-12)


@pytest.mark.parametrize("order", EULER_ORDERS)
def test_unwrap_passes_over_the_pole(order):
    # The middle angle goes past 90 degrees, where the principal form flips the other
    # two angles by half a turn; the unwrapped form keeps climbing instead.
    middle = np.radians(np.arange(80.5, 100.0, 1.0))
    path = np.stack([np.full_like(middle, 0.3), middle, np.full_like(middle, -0.2)], 1)
    raw = matrix_to_euler(euler_to_matrix(path, order), order)
    smooth = unwrap_euler(raw, order)
    np.testing.assert_allclose(smooth, path, atol=1e-9)
    assert np.degrees(np.abs(np.diff(smooth, axis=0))).max() <= 1.0 + 1e-9


def test_unwrap_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected shape \(T, 3\), got \(4,\)"):
        unwrap_euler(np.zeros(4), "XYZ")


def test_unwrap_real_clip_has_no_half_turn_jumps():
    path = CLIPS_DIR / "cmu" / "05_06.bvh"
    if not path.exists():
        pytest.skip(f"shared clip not found: {path} (clone with shared/ beside it)")
    clip = read_bvh(path)
    cols = slice(3, 6)  # the root's rotation channels, ZYX
    raw = np.radians(clip.motion[:, cols])
    assert np.abs(np.diff(raw, axis=0)).max() > np.pi  # this clip wraps in the file
    smooth = unwrap_euler(raw, "ZYX")
    assert np.abs(np.diff(smooth, axis=0)).max() <= np.pi
    np.testing.assert_allclose(
        euler_to_matrix(smooth, "ZYX"), euler_to_matrix(raw, "ZYX"), atol=1e-12
    )


# ---------------------------------------------------------------------------- 6D


def test_sixd_round_trip():
    mats = random_rotations(1000, seed=6)
    sixd = matrix_to_sixd(mats)
    assert sixd.shape == (1000, 6)
    np.testing.assert_array_equal(sixd[:, :3], mats[:, :, 0])
    np.testing.assert_array_equal(sixd[:, 3:], mats[:, :, 1])
    np.testing.assert_allclose(sixd_to_matrix(sixd), mats, atol=1e-12)


def test_sixd_to_matrix_orthonormalises():
    # Scaled and skewed columns still give a proper rotation, first column kept in
    # direction and the second moved only within the plane of the two.
    sixd = np.array([[2.0, 0, 0, 1.0, 3.0, 0]])
    m = sixd_to_matrix(sixd)[0]
    np.testing.assert_allclose(m, np.eye(3), atol=1e-15)
    noisy = matrix_to_sixd(random_rotations(200, 7)) * 3 + np.random.default_rng(
        8
    ).normal(scale=0.05, size=(200, 6))
    m = sixd_to_matrix(noisy)
    np.testing.assert_allclose(
        m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


def test_sixd_torch_matches_numpy():
    noisy = matrix_to_sixd(random_rotations(100, 9)) + 0.1
    got = sixd_to_matrix_torch(torch.from_numpy(noisy)).numpy()
    np.testing.assert_allclose(got, sixd_to_matrix(noisy), atol=1e-12)


# --------------------------------------------------------------------------- FK


def test_forward_kinematics_hand_chain():
    # A chain along +Y; the root turns 90 degrees about Z, the middle joint 90 about X.
    parents = np.array([-1, 0, 1])
    local_pos = np.array([[1.0, 2.0, 3.0], [0.0, 10.0, 0.0], [0.0, 5.0, 0.0]])
    local_rot = np.stack([rz(90), rx(90), np.eye(3)])
    world_pos, world_rot = forward_kinematics(parents, local_rot, local_pos)
    np.testing.assert_allclose(
        world_pos, [[1, 2, 3], [-9, 2, 3], [-9, 2, 8]], atol=1e-12
    )
    np.testing.assert_allclose(world_rot[2], rz(90) @ rx(90), atol=1e-15)


def random_skeleton(num_joints: int, seed: int):
    rng = np.random.default_rng(seed)
    parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, num_joints)])
    local_rot = random_rotations(4 * 7 * num_joints, seed).reshape(
        4, 7, num_joints, 3, 3
    )
    local_pos = rng.normal(size=(4, 7, num_joints, 3))
    return parents, local_rot, local_pos


def test_forward_kinematics_numpy_equals_torch():
    parents, local_rot, local_pos = random_skeleton(25, seed=10)
    want_pos, want_rot = forward_kinematics(parents, local_rot, local_pos)
    pos, rot = forward_kinematics_torch(
        parents.tolist(), torch.from_numpy(local_rot), torch.from_numpy(local_pos)
    )
    assert pos.shape == (4, 7, 25, 3) and rot.shape == (4, 7, 25, 3, 3)
    np.testing.assert_allclose(pos.numpy(), want_pos, atol=1e-12)
    np.testing.assert_allclose(rot.numpy(), want_rot, atol=1e-12)

    pos32, _ = forward_kinematics_torch(
        parents.tolist(),
        torch.from_numpy(local_rot).float(),
        torch.from_numpy(local_pos).float(),
    )
    assert pos32.dtype == torch.float32
    np.testing.assert_allclose(pos32.numpy(), want_pos, atol=1e-5)


def test_forward_kinematics_torch_gradients():
    parents, local_rot, local_pos = random_skeleton(5, seed=11)
    rot = torch.from_numpy(local_rot[0, :2]).requires_grad_()
    pos = torch.from_numpy(local_pos[0, :2]).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r, p: forward_kinematics_torch(parents.tolist(), r, p)[0], (rot, pos)
    )


def test_forward_kinematics_numpy_equals_torch_on_real_clip():
    path = CLIPS_DIR / "cmu_3dsmax" / "131_01.bvh"  # mixed ZYX / ZXY rig
    if not path.exists():
        pytest.skip(f"shared clip not found: {path} (clone with shared/ beside it)")
    clip = read_bvh(path)
    local_rot, local_pos = clip.local_transforms()
    want, _ = forward_kinematics(clip.skeleton.parents, local_rot, local_pos)
    got, _ = forward_kinematics_torch(
        clip.skeleton.parents.tolist(),
        torch.from_numpy(local_rot),
        torch.from_numpy(local_pos),
    )
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9 * clip.skeleton.height())
    np.testing.assert_array_equal(want, clip.world_positions())


# ------------------------------------------------------------------- quaternions


def test_quaternion_hand_values():
    # 90 degrees about Z: (cos 45, 0, 0, sin 45); it takes +X to +Y.
    q = euler_to_quaternion(np.radians([90.0, 0.0, 0.0]), "ZXY")
    h = math.sqrt(0.5)
    np.testing.assert_allclose(q, [h, 0.0, 0.0, h], atol=1e-15)
    np.testing.assert_allclose(
        quaternion_to_matrix(q) @ [1, 0, 0], [0, 1, 0], atol=1e-15
    )
    # i * j = k, and j * i = -k (Hamilton).
    i, j = np.array([0.0, 1, 0, 0]), np.array([0.0, 0, 1, 0])
    np.testing.assert_array_equal(quaternion_multiply(i, j), [0, 0, 0, 1])
    np.testing.assert_array_equal(quaternion_multiply(j, i), [0, 0, 0, -1])


@pytest.mark.parametrize("order", EULER_ORDERS)
def test_euler_quaternion_is_the_euler_matrix(order):
    angles = np.random.default_rng(5).uniform(-np.pi, np.pi, size=(200, 3))
    q = euler_to_quaternion(angles, order)  # (200, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-15)
    got = quaternion_to_matrix(q)
    np.testing.assert_allclose(got, euler_to_matrix(angles, order), atol=1e-14)
    # Products of quaternions are products of matrices.
    both = quaternion_to_matrix(quaternion_multiply(q[:100], q[100:]))
    np.testing.assert_allclose(both, got[:100] @ got[100:], atol=1e-14)


@pytest.mark.parametrize("order", EULER_ORDERS)
def test_quaternion_rate_is_the_derivative(order):
    rng = np.random.default_rng(6)
    angles = rng.uniform(-np.pi, np.pi, size=(50, 3))
    rates = rng.normal(scale=3.0, size=(50, 3))
    got = euler_to_quaternion_rate(angles, rates, order)  # (50, 4)
    h = 1e-5
    ahead = euler_to_quaternion(angles + h * rates, order)
    behind = euler_to_quaternion(angles - h * rates, order)
    central = (ahead - behind) / (2 * h)
    assert np.abs(got - central).max() < 1e-8 * (1 + np.abs(central).max())
    assert np.abs(got).max() > 1.0
    # A unit quaternion's derivative is orthogonal to it.
    q = euler_to_quaternion(angles, order)
    np.testing.assert_allclose(np.sum(q * got, axis=-1), 0.0, atol=1e-12)


def test_canonical_sign():
    q = np.array(
        [
            [-0.5, 0.5, 0.5, 0.5],
            [0.5, -0.5, -0.5, -0.5],
            [0.0, -1.0, 0.0, 0.0],
            [0.0, 0.0, 0.6, -0.8],
            [-0.0, 0.0, -0.0, -1.0],
        ]
    )
    np.testing.assert_array_equal(canonical_quaternion_sign(q), [-1, 1, -1, 1, -1])
    signed = q * canonical_quaternion_sign(q)[:, None]
    np.testing.assert_array_equal(canonical_quaternion_sign(signed), 1.0)
