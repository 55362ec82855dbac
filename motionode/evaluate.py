"""Measuring a model on held-out clips.

Errors are mean per-joint position errors (MPJPE) in millimetres, on joint positions
in the character's heading frame (root above the origin, facing a fixed way), after
the rig's unit conversion. Every figure comes with a simple baseline beside it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from motionode import features as feat
from motionode.bvh import Clip
from motionode.generate import MotionModel
from motionode.torchpose import FeatureFK
from motionode.train import stride_clip

logger = logging.getLogger(__name__)

__all__ = ["clip_speeds", "prediction_error", "reconstruction_error", "stream_speeds"]


@torch.no_grad()
def reconstruction_error(model: MotionModel, clips: list[Clip]) -> dict:
    """MPJPE (mm) of reconstructing each observation window from its own frames
    (posterior mean, no noise), beside always predicting the data's mean pose."""
    fk = FeatureFK(model.spec).double()
    total_model = total_mean = 0.0
    frames = 0
    per_clip = {}
    for clip in clips:
        model.check_rig(clip)
        x, t = model.windows(clip)
        if len(x) == 0:
            logger.warning("%s: shorter than one window, skipped", clip.source)
            continue
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        mean, _ = model.net.encode(x, mask, t)
        recon = model.net.decoder(model.net.solve(mean, t))  # (W, T, D)
        truth = fk(x)  # (W, T, J, 3) metres
        err = (fk(recon) - truth).norm(dim=-1).mean(-1)  # (W, T)
        base = (fk(torch.zeros_like(x)) - truth).norm(dim=-1).mean(-1)
        n = err.numel()
        per_clip[clip.source] = {
            "model_mm": 1000 * float(err.mean()),
            "mean_pose_mm": 1000 * float(base.mean()),
            "frames": n,
        }
        total_model += float(err.sum())
        total_mean += float(base.sum())
        frames += n
    if frames == 0:
        raise ValueError("clips: none is long enough for one observation window")
    return {
        "model_mm": 1000 * total_model / frames,
        "mean_pose_mm": 1000 * total_mean / frames,
        "frames": frames,
        "clips": per_clip,
    }


def _speeds(positions: np.ndarray, fps: float) -> np.ndarray:
    """Mean joint speed (m/s) per whole second of positions (F, J, 3) metres."""
    step = np.linalg.norm(np.diff(positions, axis=0), axis=-1).mean(-1) * fps  # (F-1,)
    per = round(fps)
    seconds = len(step) // per
    return step[: seconds * per].reshape(seconds, per).mean(1)


def clip_speeds(model: MotionModel, clips: list[Clip]) -> np.ndarray:
    """Mean joint speed (m/s) for every whole second of the given clips, measured
    in the heading frame like generated motion is (root motion excluded)."""
    fk = FeatureFK(model.spec).double()
    out = []
    for clip in clips:
        c = stride_clip(clip, model.train_fps)
        x = torch.tensor(model.spec.normalize(feat.encode(model.spec, c).pose))
        out.append(_speeds(fk(x).numpy(), c.fps))
    return np.concatenate(out) if out else np.zeros(0)


def stream_speeds(
    model: MotionModel, source: str, seed: int, seconds: float, fps: float = 30.0
) -> np.ndarray:
    """Mean joint speed (m/s) per second of a generated stream, heading frame."""
    stream = model.open(source, seed)
    times = np.arange(round(seconds * fps) + 1) / fps
    poses, _ = stream.states(times)
    fk = FeatureFK(model.spec).double()
    x = torch.tensor(model.spec.normalize(poses))
    return _speeds(fk(x).numpy(), fps)


@torch.no_grad()
def prediction_error(
    model: MotionModel,
    clips: list[Clip],
    horizons: tuple[int, ...] = (2, 5, 10, 12, 30),
) -> dict:
    """MPJPE (mm) of continuing each observation window ``h`` frames (at the
    training rate) past its last frame, beside two baselines: holding the last
    pose (zero velocity) and extrapolating joint positions at the last frame's
    velocity (constant velocity).

    Returns:
        {"horizons_ms": [...], "model_mm": [...], "zero_velocity_mm": [...],
        "constant_velocity_mm": [...], "windows": n}.
    """
    fk = FeatureFK(model.spec).double()
    H, T = max(horizons), model.obs_frames
    sums = np.zeros((3, len(horizons)))
    count, period = 0, 1.0 / model.train_fps
    for clip in clips:
        c = stride_clip(clip, model.train_fps)
        x = torch.tensor(model.spec.normalize(feat.encode(model.spec, c).pose))
        starts = range(0, len(x) - T - H + 1, T)
        if not len(starts):
            continue
        idx = torch.tensor([list(range(s, s + T + H)) for s in starts])  # (W, T+H)
        win = x[idx]  # (W, T+H, D)
        obs, future = win[:, :T], win[:, T:]
        t_obs = (torch.arange(T, dtype=torch.float64) - (T - 1)) * period
        t_obs = t_obs.expand(len(win), T)
        mask = torch.ones(len(win), T, dtype=torch.bool)
        mean, _ = model.net.encode(obs, mask, t_obs)
        t_pred = torch.tensor(horizons, dtype=torch.float64) * period
        z = model.net.solve(mean, t_pred.expand(len(win), -1))  # (W, n, L)
        anchor = obs[:, -1] - model.net.decoder(mean)
        pred = (
            model.net.decoder(z)
            + model.net.fade(t_pred)[None, :, None] * anchor[:, None]
        )  # (W, n, D)
        truth = fk(future[:, [h - 1 for h in horizons]])  # (W, n, J, 3)
        last, before = fk(obs[:, -1]), fk(obs[:, -2])  # (W, J, 3)
        steps = torch.tensor(horizons, dtype=torch.float64)[None, :, None, None]
        guesses = [
            fk(pred),
            last[:, None].expand_as(truth),
            last[:, None] + steps * (last - before)[:, None],
        ]
        for k, g in enumerate(guesses):
            sums[k] += (g - truth).norm(dim=-1).mean(-1).sum(0).numpy()
        count += len(win)
    if count == 0:
        raise ValueError("clips: none is long enough for a window and its future")
    mm = 1000 * sums / count
    return {
        "horizons_ms": [round(1000 * h * period) for h in horizons],
        "model_mm": mm[0].tolist(),
        "zero_velocity_mm": mm[1].tolist(),
        "constant_velocity_mm": mm[2].tolist(),
        "windows": count,
    }
