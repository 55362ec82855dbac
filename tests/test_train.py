"""Latent-ODE VAE and its training loop, on a bundled real clip with a tiny config."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from motionode.bvh import read_bvh
from motionode.checkpoint import load_checkpoint, read_metadata
from motionode.model import LatentODEVAE, ModelConfig, odeint_grid
from motionode.train import TrainConfig, Trainer

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CLIPS = ASSETS / "clips"


@pytest.fixture(scope="module")
def clips():
    return [
        read_bvh(ASSETS / "clips" / "dataset-1_walk_normal_001.bvh"),
        read_bvh(ASSETS / "clips" / "dataset-1_bow_normal_001.bvh"),
    ]


def tiny_trainer(clips, steps=6, seed=1) -> Trainer:
    cfg = TrainConfig(
        obs_frames=6,
        pred_frames=6,
        batch_size=4,
        steps=steps,
        checkpoint_every=3,
        seed=seed,
        licence="CC BY-NC 4.0 (test)",
    )
    trainer = Trainer(clips, cfg, device="cpu")
    small = ModelConfig(
        feature_dim=trainer.spec.dim, latent_dim=8, hidden=16, ode_hidden=16
    )
    return Trainer(clips, cfg, small, device="cpu", spec=trainer.spec)


def weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_same_seed_same_run(clips, tmp_path):
    a, b = tiny_trainer(clips), tiny_trainer(clips)
    la = a.train(tmp_path / "a.safetensors")
    lb = b.train(tmp_path / "b.safetensors")
    assert la == lb
    for k, v in weights(a).items():
        assert torch.equal(v, weights(b)[k]), k
    c = tiny_trainer(clips, seed=2)
    c.train(tmp_path / "c.safetensors")
    assert not torch.equal(
        weights(c)["decoder.0.weight"], weights(a)["decoder.0.weight"]
    )


def test_the_largest_seed_trains(clips, tmp_path):
    # Seeds run to 2^63 - 1, as in the bridge protocol; the per-step generator
    # seed derived from one must still be one torch takes.
    trainer = tiny_trainer(clips, steps=1, seed=2**63 - 1)
    terms = trainer.train(tmp_path / "big.safetensors")
    assert np.isfinite(terms["total"])
    assert trainer.step == 1


@pytest.mark.parametrize("seed", [-1, 2**63, 1.0, True])
def test_seeds_outside_the_range_are_refused(seed):
    with pytest.raises(ValueError) as info:
        TrainConfig(seed=seed)
    assert str(info.value) == (
        f"seed: expected a whole number from 0 to 9223372036854775807, got {seed!r}"
    )


def test_resume_matches_uninterrupted_run(clips, tmp_path):
    full = tiny_trainer(clips, steps=6)
    full.train(tmp_path / "full.safetensors")

    def interrupt(step, terms):
        if step == 4:
            raise KeyboardInterrupt

    half = tiny_trainer(clips, steps=6)
    with pytest.raises(KeyboardInterrupt):
        half.train(tmp_path / "half.safetensors", progress=interrupt)
    resumed = Trainer.resume(tmp_path / "half.safetensors", clips, "cpu")
    assert resumed.step == 3  # the last checkpoint before the interruption
    resumed.train(tmp_path / "half.safetensors")
    for k, v in weights(full).items():
        torch.testing.assert_close(weights(resumed)[k], v, rtol=1e-5, atol=1e-6)


def test_checkpoint_carries_what_generation_needs(clips, tmp_path):
    t = tiny_trainer(clips, steps=3)
    t.train(tmp_path / "m.safetensors", clip_names=["walk.bvh", "bow.bvh"])
    meta = read_metadata(tmp_path / "m.safetensors")
    assert meta["clips"] == ["walk.bvh", "bow.bvh"]
    assert meta["licence"] == "CC BY-NC 4.0 (test)"
    assert meta["step"] == 3
    assert meta["feature_spec"]["skeleton"]["names"][:2] == ["joint_Root", "Hips"]
    assert len(meta["feature_spec"]["mean"]) == t.spec.dim
    assert meta["model_config"]["latent_dim"] == 8
    tensors, _ = load_checkpoint(tmp_path / "m.safetensors")
    assert any(k.startswith("optim.") for k in tensors)


def test_non_finite_loss_recovers_from_last_checkpoint(clips, tmp_path, caplog):
    t = tiny_trainer(clips, steps=6)
    real = t.losses
    calls = {"n": 0}

    def flaky(batch, step):
        out = real(batch, step)
        calls["n"] += 1
        if step == 4 and calls["n"] < 7:
            out["total"] = out["total"] * float("nan")
        return out

    t.losses = flaky
    path = tmp_path / "r.safetensors"
    t.train(path)
    assert t.step == 6
    assert "back to the last good checkpoint" in caplog.text
    assert read_metadata(path)["step"] == 6
    tensors, _ = load_checkpoint(path)
    assert all(torch.isfinite(v).all() for v in tensors.values())


def test_endless_divergence_stops_and_keeps_checkpoint(clips, tmp_path):
    t = tiny_trainer(clips, steps=6)
    real = t.losses

    def broken(batch, step):
        out = real(batch, step)
        if step >= 3:
            raise AssertionError("underflow in dt 0.0")
        return out

    t.losses = broken
    path = tmp_path / "d.safetensors"
    with pytest.raises(RuntimeError, match="last good checkpoint kept"):
        t.train(path)
    assert read_metadata(path)["step"] == 3


def test_solver_lands_on_every_requested_time():
    torch.manual_seed(0)
    net = LatentODEVAE(
        ModelConfig(feature_dim=12, latent_dim=6, hidden=8, ode_hidden=8)
    ).double()
    with torch.no_grad():
        net.dynamics.log_omega -= 2.0  # slower oscillators: RK4 error far below 1e-5
    z0 = torch.randn(2, 6, dtype=torch.float64)
    times = torch.tensor([[0.01, 0.05, 0.3], [0.02, 0.05, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        path = net.solve(z0, times)  # (2, 3, 6)
        for b in range(2):
            span = torch.cat([torch.zeros(1, dtype=torch.float64), times[b]])
            fine = odeint_grid(net.dynamics, z0[b], span, 3000.0)[1:]  # (3, 6)
            # Interpolating between grid points instead would be off by ~1e-3.
            torch.testing.assert_close(path[b], fine, rtol=0, atol=1e-5)
        backward = net.solve(z0, -times)
        again = odeint_grid(
            net.dynamics,
            z0[0],
            torch.cat([torch.zeros(1, dtype=torch.float64), -times[0]]),
            3000.0,
        )[1:]
        torch.testing.assert_close(backward[0], again, rtol=0, atol=1e-5)


def test_encoder_ignores_frames_it_did_not_observe():
    torch.manual_seed(0)
    net = LatentODEVAE(ModelConfig(feature_dim=5, latent_dim=4, hidden=8, ode_hidden=8))
    obs = torch.randn(1, 6, 5)
    times = torch.tensor([[-0.5, -0.4, -0.25, -0.2, -0.1, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False, True, True]])
    changed = obs.clone()
    changed[0, 1] += 100.0
    changed[0, 3] -= 100.0
    a = net.encode(obs, mask, times)
    b = net.encode(changed, mask, times)
    torch.testing.assert_close(a[0], b[0])
    c = net.encode(obs, torch.ones_like(mask), times)
    assert not torch.allclose(a[0], c[0])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "motionode.cli", "train",
        str(CLIPS), "--batch", "4", "--checkpoint-every", "2", "--threads", "1",
        "--out", str(tmp_path / "m.safetensors"), *args,
    ]  # fmt: skip
    done = subprocess.run(
        cmd, check=False, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_torchrun_gloo_two_processes_train_resume_and_sample(tmp_path):
    from motionode.generate import MotionModel

    done = _torchrun(tmp_path, "--steps", "2")
    assert "2 processes" in done.stdout
    assert done.stdout.count("model written") == 1  # process 0 alone writes
    ckpt = tmp_path / "m.ckpt.safetensors"
    assert read_metadata(ckpt)["world_size"] == 2
    assert read_metadata(ckpt)["step"] == 2

    _torchrun(tmp_path, "--resume", str(ckpt), "--steps", "4")
    assert read_metadata(ckpt)["step"] == 4
    model = MotionModel.load(tmp_path / "m.safetensors")
    clip = model.open("prior", seed=0).clip(1.0, 30.0)
    assert clip.motion.shape == (31, model.skeleton.num_channels)
    assert np.isfinite(clip.motion).all()


def test_mixed_precision_is_for_cuda_only(clips):
    assert TrainConfig().amp
    assert not tiny_trainer(clips).amp_enabled  # CPU: float32 throughout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_bfloat16_autocast(clips, tmp_path):
    cfg = TrainConfig(obs_frames=6, pred_frames=6, batch_size=8, steps=3)
    trainer = Trainer(clips, cfg, device="cuda")
    assert trainer.device.type == "cuda"
    assert trainer.amp_enabled == torch.cuda.is_bf16_supported()
    last = trainer.train(tmp_path / "gpu.safetensors")
    assert np.isfinite(last["total"]) and trainer.step == 3


def test_the_cmu_rig_trains_and_generates_too(tmp_path):
    """Nothing is tied to the Bandai rig: the CMU rig (31 joints, ZYX, 120 fps,
    root-only positions, other joint names in one of its exports) trains, and its
    model continues a CMU clip."""
    from motionode.generate import MotionModel

    shared = Path(__file__).parents[2] / "shared" / "data" / "bvh" / "cmu"
    if not shared.is_dir():
        pytest.skip(f"shared clips not found: {shared} (clone with shared/ beside)")
    clips = [read_bvh(shared / "01_01.bvh"), read_bvh(shared / "05_06.bvh")]
    cfg = TrainConfig(
        obs_frames=6, pred_frames=6, batch_size=4, steps=3, units_to_m=0.056444
    )
    spec = Trainer(clips, cfg, device="cpu").spec
    small = ModelConfig(feature_dim=spec.dim, latent_dim=8, hidden=16, ode_hidden=16)
    trainer = Trainer(clips, cfg, small, device="cpu", spec=spec)
    trainer.train(tmp_path / "cmu.safetensors")
    walk = shared / "02_01.bvh"  # LeftHandIndex1 where 01_01 says LFingers
    model = MotionModel.load(tmp_path / "cmu.safetensors", seeds=[walk])
    assert model.skeleton.num_channels == 96 and "clip:02_01" in model.sources()
    stream = model.open("clip:02_01", seed=0)
    pos = stream.positions_at(np.array([0.0, 0.5, 2.5]))  # (3, 31, 3) metres
    assert np.isfinite(pos).all()
    # Even from a barely trained model, the continuation starts at the seed clip's
    # last pose, in metres.
    last = read_bvh(walk).world_positions()[-1] * 0.056444  # (31, 3)
    assert np.abs(pos[0] - last).max() < 1e-3
    assert 1.2 < np.ptp(pos[0, :, 1]) < 2.2  # a person's height, in metres
