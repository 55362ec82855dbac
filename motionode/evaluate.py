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

__all__ = ["clip_speeds", "reconstruction_error", "stream_speeds"]


@torch.no_grad()
def reconstruction_error(model: MotionModel, clips: list[Clip]) -> dict:
    """MPJPE (mm) of reconstructing each observation window from its own frames
    (posterior mean, no noise), beside always predicting the data's mean pose."""
    fk = FeatureFK(model.spec).double()
    total_model = total_mean = 0.0
    frames = 0
    per_clip = {}
    for clip in clips:
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
        per_clip[clip.source] = {"model_mm": 1000 * float(err.mean()),
                                 "mean_pose_mm": 1000 * float(base.mean()),
                                 "frames": n}
        total_model += float(err.sum())
        total_mean += float(base.sum())
        frames += n
    if frames == 0:
        raise ValueError("clips: none is long enough for one observation window")
    return {"model_mm": 1000 * total_model / frames,
            "mean_pose_mm": 1000 * total_mean / frames,
            "frames": frames, "clips": per_clip}


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


def stream_speeds(model: MotionModel, source: str, seed: int, seconds: float,
                  fps: float = 30.0) -> np.ndarray:
    """Mean joint speed (m/s) per second of a generated stream, heading frame."""
    stream = model.open(source, seed)
    times = np.arange(round(seconds * fps) + 1) / fps
    poses, _ = stream.states(times)
    fk = FeatureFK(model.spec).double()
    x = torch.tensor(model.spec.normalize(poses))
    return _speeds(fk(x).numpy(), fps)
