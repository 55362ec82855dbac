"""Measuring a model on held-out clips.

Errors are mean per-joint position errors (MPJPE) in millimetres, on joint positions
in the character's heading frame (root above the origin, facing a fixed way), after
the rig's unit conversion, over the body's joints: the moving root and those below
it (static reference joints above it, such as Bandai's ``joint_Root``, would add
exact zeros). Every figure comes with a simple baseline beside it.

Plausibility figures (foot sliding, bone lengths, jerk) are measured on world joint
positions in metres, root motion included, at the training rate, for ground truth,
reconstructions and generated streams alike; see :mod:`motionode.plausibility`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from motionode import features as feat
from motionode import plausibility as plaus
from motionode.bvh import Clip, channels_to_local
from motionode.feasibility import ContactConfig, foot_joints
from motionode.generate import MotionModel
from motionode.interpolation import cubic_spline, slerp_features
from motionode.rotations import axis_angle_matrix
from motionode.torchpose import FeatureFK
from motionode.train import stride_clip

logger = logging.getLogger(__name__)

__all__ = [
    "UPSAMPLING_METHODS",
    "clip_speeds",
    "plausibility",
    "prediction_error",
    "reconstruction_error",
    "stream_motion",
    "stream_speeds",
    "upsampling_error",
]


@torch.no_grad()
def reconstruction_error(model: MotionModel, clips: list[Clip]) -> dict:
    """MPJPE (mm) of reconstructing each observation window from its own frames
    (posterior mean, no noise), beside always predicting the data's mean pose."""
    fk = FeatureFK(model.spec).double()
    total_model = total_mean = 0.0
    frames = 0
    per_clip = {}
    joint_sum = np.zeros(model.skeleton.num_joints)
    body = _body(model)
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
        per_joint = (fk(recon) - truth).norm(dim=-1)  # (W, T, J)
        joint_sum = joint_sum + per_joint.sum((0, 1)).numpy()
        err = per_joint[..., body].mean(-1)  # (W, T)
        base = (fk(torch.zeros_like(x)) - truth)[..., body, :].norm(dim=-1).mean(-1)
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
        "per_joint_mm": _per_joint(model, 1000 * joint_sum / frames),
        "clips": per_clip,
    }


def _body(model: MotionModel) -> list[int]:
    """Joints that move: the root and those below it (FeatureFK puts the ones
    above it at the origin)."""
    above = set(feat._ancestors(model.skeleton, model.spec.root))
    return [j for j in range(model.skeleton.num_joints) if j not in above]


def _per_joint(model: MotionModel, mm: np.ndarray) -> dict[str, float]:
    """Per-joint errors (J,) by the name of each body joint."""
    return {model.skeleton.names[j]: float(mm[j]) for j in _body(model)}


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


def _stream_poses(
    model: MotionModel, source: str, seed: int, seconds: float, fps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (F, D), root states (F, 3) and heading-frame joint positions
    (F, J, 3) metres of a generated stream at ``i / fps``."""
    stream = model.open(source, seed)
    times = np.arange(round(seconds * fps) + 1) / fps
    poses, roots = stream.states(times)
    fk = FeatureFK(model.spec).double()
    heading_pos = fk(torch.tensor(model.spec.normalize(poses))).numpy()
    return poses, roots, heading_pos


def stream_speeds(
    model: MotionModel, source: str, seed: int, seconds: float, fps: float = 30.0
) -> np.ndarray:
    """Mean joint speed (m/s) per second of a generated stream, heading frame."""
    _, _, heading_pos = _stream_poses(model, source, seed, seconds, fps)
    return _speeds(heading_pos, fps)


def stream_motion(
    model: MotionModel, source: str, seed: int, seconds: float, fps: float = 30.0
) -> dict[str, np.ndarray]:
    """A generated stream at ``i / fps`` for ``seconds``, solved once.

    Returns:
        {"heading_pos": (F, J, 3) metres in the heading frame, "world_pos":
        (F, J, 3) metres in the world, root motion included, "speeds": mean joint
        speed (m/s) per whole second, heading frame, as :func:`stream_speeds`}.
    """
    poses, roots, heading_pos = _stream_poses(model, source, seed, seconds, fps)
    return {
        "heading_pos": heading_pos,
        "world_pos": _world(model, poses, roots[:, :2], roots[:, 2]),
        "speeds": _speeds(heading_pos, fps),
    }


def _world(
    model: MotionModel, pose: np.ndarray, root_xz: np.ndarray, heading: np.ndarray
) -> np.ndarray:
    """World joint positions (F, J, 3) metres of features (F, D) on a root path."""
    rows = feat.decode(model.spec, pose, root_xz, heading, continuous=False)
    return Clip(model.skeleton, rows, 1.0).world_positions() * model.spec.units_to_m


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
    body = _body(model)
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
            err = (g - truth)[..., body, :].norm(dim=-1)  # (W, n, J')
            sums[k] += err.mean(-1).sum(0).numpy()
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


# ------------------------------------------------------------------ upsampling

UPSAMPLING_METHODS = ("model", "slerp", "spline")


def _observed_features(ff: feat.FrameFeatures, idx: np.ndarray) -> np.ndarray:
    """Features (K, D) of frames ``idx`` (K,), with root velocity and turn rate
    taken between those frames, so nothing of an unobserved frame leaks in."""
    pose = ff.pose[idx].copy()
    if len(idx) < 2:
        return pose
    dt = np.diff(ff.times[idx])
    step = np.zeros((len(dt), 3))
    step[:, [0, 2]] = np.diff(ff.root_xz[idx], axis=0) / dt[:, None]
    yaw = axis_angle_matrix(feat.UP, -ff.heading[idx[:-1]])  # (K-1, 3, 3)
    pose[:-1, 1:3] = np.einsum("kij,kj->ki", yaw, step)[:, [0, 2]]
    pose[:-1, 3] = np.diff(ff.heading[idx]) / dt
    pose[-1, 1:4] = pose[-2, 1:4]
    return pose


def _patterns(
    fps: float, frames: int, train_fps: float, rates: tuple[float, ...]
) -> list[tuple[str, float | None, int | None]]:
    """Observation conditions (name, observed fps or None, frame step or None for
    the irregular one) that fit a clip at ``fps`` with windows of ``frames``."""
    out: list[tuple[str, float | None, int | None]] = []
    for rate in rates:
        k = fps / rate
        if abs(k - round(k)) > 1e-6 or round(k) < 1 or round(k) >= frames:
            logger.warning(
                "%g fps does not divide the clip's %g fps: skipped", rate, fps
            )
            continue
        out.append((f"{rate:g} fps", float(rate), round(k)))
    out.append((f"irregular (half of {train_fps:g} fps)", None, None))
    return out


def _observed_index(
    frames: int, step: int | None, grid_step: int, rng: np.random.Generator
) -> np.ndarray:
    """Observed frames (K,) of one window of ``frames``, the last always included.
    With no ``step``, half of the training-rate grid at random (first and last
    kept)."""
    if step is not None:
        return np.arange(frames - 1, -1, -step)[::-1]
    grid = np.arange(frames - 1, -1, -grid_step)[::-1]
    keep = max(2, len(grid) // 2)
    inner = np.sort(rng.choice(grid[1:-1], keep - 2, replace=False))
    return np.concatenate([grid[:1], inner, grid[-1:]])


def _rig_bones(model: MotionModel) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Bones (child, parent) below the moving root, and their lengths (B,) in
    metres in the model's rig."""
    sk = model.skeleton
    row = np.asarray(model.spec.const_channels)[None]  # (1, C)
    _, const_pos = channels_to_local(sk, row)  # (1, J, 3)
    below = {model.spec.root}
    bones = []
    for j, p in enumerate(sk.parents):
        if p in below:
            below.add(j)
            bones.append((j, int(p)))
    lengths = np.array([np.linalg.norm(const_pos[0, j]) for j, _ in bones])
    return bones, lengths * model.spec.units_to_m


@torch.no_grad()
def upsampling_error(
    model: MotionModel,
    clips: list[Clip],
    rates: tuple[float, ...] = (10.0, 30.0),
    seed: int = 0,
) -> dict:
    """MPJPE (mm, heading frame) of filling in a clip's full frame rate from fewer
    observed frames: the model against slerp and a cubic spline.

    Each clip is cut into back-to-back windows as long as the model's observation
    window (``obs_frames`` at ``train_fps``, in frames at the clip's own rate). In
    each window the model encodes only the observed frames (the last one always
    among them) and decodes at the exact times of every frame of the clip from the
    first observed frame to the last: solver states at those times, no
    interpolation. Conditions: each of ``rates`` (every k-th frame; skipped unless
    it divides the clip's rate), and irregular times (half of the training-rate
    frames dropped at random, first and last kept; ``seed`` fixes the draw).
    Baselines: slerp of every rotation with the root height linear, then forward
    kinematics; and a natural cubic spline through the observed heading-frame joint
    positions.

    Returns:
        {"clip_fps": [...], "conditions": [{"name", "observed_fps" (None when
        irregular), "pure_reconstruction" (every frame observed), "windows",
        "frames", "between_frames", "<method>_mm" over all target frames,
        "<method>_between_mm" over unobserved ones only, "per_joint_mm":
        {method: {joint: mm}}, "spline_bone_error_mm": {"mean_mm", "max_mm"}}]}
        for the methods in ``UPSAMPLING_METHODS``.
    """
    fk = FeatureFK(model.spec).double()
    bones, lengths = _rig_bones(model)
    rng = np.random.default_rng(seed)
    acc: dict[str, _Tally] = {}
    fps_seen: set[float] = set()
    for clip in clips:
        model.check_rig(clip)
        frames = round((model.obs_frames - 1) * clip.fps / model.train_fps) + 1
        grid_step = max(1, round(clip.fps / model.train_fps))
        ff = feat.encode(model.spec, clip)
        starts = np.arange(0, len(ff.pose) - frames + 1, frames)
        if not len(starts):
            logger.warning("%s: shorter than one window, skipped", clip.source)
            continue
        fps_seen.add(clip.fps)
        for name, rate, step in _patterns(clip.fps, frames, model.train_fps, rates):
            rel = np.stack(
                [_observed_index(frames, step, grid_step, rng) for _ in starts]
            )
            obs = starts[:, None] + rel  # (W, K) frames of the clip
            tgt = starts[:, None] + np.arange(rel[0, 0], frames)  # (W, N)
            seen = np.zeros(tgt.shape, dtype=bool)
            np.put_along_axis(seen, rel - rel[0, 0], True, axis=1)
            pos = _upsampled_positions(model, fk, ff, obs, tgt)  # method -> (W,N,J,3)
            tally = acc.setdefault(name, _Tally(rate, step == 1, _body(model)))
            tally.add(pos, seen)
            bone = plaus.bone_length_error(
                pos["spline"].reshape(-1, *pos["spline"].shape[-2:]), bones, lengths
            )
            tally.add_bone(bone, pos["spline"].shape[0] * pos["spline"].shape[1])
    if not acc:
        raise ValueError("clips: none is long enough for one observation window")
    return {
        "clip_fps": sorted(fps_seen),
        "conditions": [t.summary(name, model) for name, t in acc.items()],
    }


class _Tally:
    """Running error sums of one observation condition over clips."""

    def __init__(self, rate: float | None, pure: bool, body: list[int]) -> None:
        self.rate, self.pure, self.body = rate, pure, body
        self.windows = self.frames = self.between = 0
        self.joint_sum: dict[str, np.ndarray] = {}
        self.between_sum = dict.fromkeys(UPSAMPLING_METHODS, 0.0)
        self.bone_sum = self.bone_count = self.bone_max = 0.0

    def add(self, pos: dict[str, np.ndarray], seen: np.ndarray) -> None:
        truth = pos["truth"]
        self.windows += truth.shape[0]
        self.frames += seen.size
        self.between += int((~seen).sum())
        for m in UPSAMPLING_METHODS:
            mm = 1000 * np.linalg.norm(pos[m] - truth, axis=-1)  # (W, N, J)
            self.joint_sum[m] = self.joint_sum.get(m, 0.0) + mm.sum((0, 1))
            self.between_sum[m] += float(mm[~seen][:, self.body].mean(-1).sum())

    def add_bone(self, bone: dict, frames: int) -> None:
        self.bone_sum += bone["mean_mm"] * frames
        self.bone_count += frames
        self.bone_max = max(self.bone_max, bone["max_mm"])

    def summary(self, name: str, model: MotionModel) -> dict:
        out: dict = {
            "name": name,
            "observed_fps": self.rate,
            "pure_reconstruction": self.pure,
            "windows": self.windows,
            "frames": self.frames,
            "between_frames": self.between,
        }
        body = _body(model)
        for m in UPSAMPLING_METHODS:
            per_joint = self.joint_sum[m] / self.frames
            out[f"{m}_mm"] = float(per_joint[body].mean())
            out[f"{m}_between_mm"] = (
                self.between_sum[m] / self.between if self.between else float("nan")
            )
        out["per_joint_mm"] = {
            m: _per_joint(model, self.joint_sum[m] / self.frames)
            for m in UPSAMPLING_METHODS
        }
        out["spline_bone_error_mm"] = {
            "mean_mm": self.bone_sum / self.bone_count,
            "max_mm": self.bone_max,
        }
        return out


def _upsampled_positions(
    model: MotionModel,
    fk: FeatureFK,
    ff: feat.FrameFeatures,
    obs: np.ndarray,
    tgt: np.ndarray,
) -> dict[str, np.ndarray]:
    """Heading-frame joint positions (W, N, J, 3) metres at the target frames
    ``tgt`` (W, N) from the observed frames ``obs`` (W, K): truth and each method."""
    spec, net = model.spec, model.net
    W, K = obs.shape
    anchor = ff.times[obs[:, -1:]]  # (W, 1) the last observed frame is time 0
    t_obs = ff.times[obs] - anchor  # (W, K)
    t_tgt = ff.times[tgt] - anchor  # (W, N), all <= 0
    seen = np.stack([_observed_features(ff, o) for o in obs])  # (W, K, D)
    x_obs = torch.tensor(spec.normalize(seen))

    def positions(pose: np.ndarray) -> np.ndarray:
        return fk(torch.tensor(spec.normalize(pose))).numpy()

    mask = torch.ones(W, K, dtype=torch.bool)
    mean, _ = net.encode(x_obs, mask, torch.tensor(t_obs))
    decoded = net.decoder(net.solve(mean, torch.tensor(t_tgt)))  # (W, N, D)
    obs_pos = positions(ff.pose[obs])  # (W, K, J, 3)
    return {
        "truth": positions(ff.pose[tgt]),
        "model": fk(decoded).numpy(),
        "slerp": positions(
            np.stack(
                [
                    slerp_features(ff.pose[o], ff.times[o], ff.times[t])
                    for o, t in zip(obs, tgt)
                ]
            )
        ),
        "spline": np.stack(
            [
                cubic_spline(p, ff.times[o], ff.times[t])
                for p, o, t in zip(obs_pos, obs, tgt)
            ]
        ),
    }


# ------------------------------------------------------------------ plausibility


def _feet(model: MotionModel) -> list[int]:
    """Foot joints of the rig: those named like a foot, toe or ankle."""
    return foot_joints(model.skeleton, ContactConfig(), model.spec.root)


@torch.no_grad()
def _reconstructed_world(
    model: MotionModel, clips: list[Clip]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """World joint positions (T, J, 3) metres of every back-to-back observation
    window at the training rate: the clip's, and the model's reconstruction of it
    (posterior mean), its root path integrated from the window's first frame."""
    truth, recon = [], []
    T = model.obs_frames
    for clip in clips:
        model.check_rig(clip)
        c = stride_clip(clip, model.train_fps)
        ff = feat.encode(model.spec, c)
        world = c.world_positions() * model.spec.units_to_m  # (F, J, 3)
        x, t = model.windows(c)
        if len(x) == 0:
            continue
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        mean, _ = model.net.encode(x, mask, t)
        pose = model.denormalize(model.net.decoder(model.net.solve(mean, t)))
        for w, p in enumerate(pose.numpy()):  # p: (T, D)
            s = w * T
            xz, heading = feat.integrate_root(
                p, ff.times[s : s + T], ff.root_xz[s], float(ff.heading[s])
            )
            truth.append(world[s : s + T])
            recon.append(_world(model, p, xz, heading))
    return truth, recon


def _measure(
    seqs: list[np.ndarray],
    fps: float,
    feet: list[int],
    rest: np.ndarray,
    rule: plaus.ContactRule,
    bones: list[tuple[int, int]],
    lengths: np.ndarray,
    body: list[int],
) -> dict:
    """Foot sliding, bone error and jerk (of the ``body`` joints) pooled over
    sequences (F, J, 3)."""
    planted = slide = frames = 0
    contact_frames = 0.0
    bone_sum = bone_max = 0.0
    jerks = []
    for pos in seqs:
        f = plaus.foot_slide(pos, fps, feet, rest, rule)
        planted += f["planted_frames"]
        slide += f["slide_sum_mm_s"]
        contact_frames += f["contact_fraction"] * len(pos)
        b = plaus.bone_length_error(pos, bones, lengths)
        bone_sum += b["mean_mm"] * len(pos)
        bone_max = max(bone_max, b["max_mm"])
        jerks.append(plaus.jerk(pos, fps)[:, body].reshape(-1))
        frames += len(pos)
    return {
        "foot_slide_mm_s": slide / planted if planted else float("nan"),
        "contact_fraction": contact_frames / frames,
        "bone_error_mean_mm": bone_sum / frames,
        "bone_error_max_mm": bone_max,
        "jerk_m_s3": float(np.concatenate(jerks).mean()),
        "frames": frames,
    }


def plausibility(
    model: MotionModel,
    clips: list[Clip],
    streams: dict[str, np.ndarray],
    stream_fps: float = 30.0,
    rule: plaus.ContactRule | None = None,
) -> dict:
    """Foot sliding, bone-length error and jerk of the clips' back-to-back
    observation windows (at the training rate), of the model's reconstructions of
    those windows, and of generated streams, all measured alike.

    Args:
        streams: name -> (F, J, 3) world joint positions in metres at
            ``stream_fps`` (see :func:`stream_motion`); compare like with like,
            so ``stream_fps`` should be the training rate.
        rule: contact thresholds; each foot joint's resting height is its 1st
            percentile height in the clips.

    Returns:
        {"fps", "contact": {"feet", "rest_height_m", "height_margin_m",
        "speed_m_s", "floor_y_m"}, "sequences": {name: {"foot_slide_mm_s",
        "contact_fraction", "bone_error_mean_mm", "bone_error_max_mm", "jerk_m_s3",
        "frames"}}} with names "ground truth", "reconstruction" and the streams'.
    """
    rule = rule or plaus.ContactRule()
    truth, recon = _reconstructed_world(model, clips)
    if not truth:
        raise ValueError("clips: none is long enough for one observation window")
    feet = _feet(model)
    rest = plaus.resting_heights(truth, feet, rule.floor_y_m)
    bones, lengths = _rig_bones(model)
    args = (feet, rest, rule, bones, lengths, _body(model))
    fps = model.train_fps
    sequences = {
        "ground truth": _measure(truth, fps, *args),
        "reconstruction": _measure(recon, fps, *args),
    }
    for name, pos in streams.items():
        sequences[name] = _measure([pos], stream_fps, *args)
    names = model.skeleton.names
    return {
        "fps": fps,
        "contact": {
            "feet": [names[j] for j in feet],
            "rest_height_m": {names[j]: float(h) for j, h in zip(feet, rest)},
            "height_margin_m": rule.height_margin_m,
            "speed_m_s": rule.speed_m_s,
            "floor_y_m": rule.floor_y_m,
        },
        "sequences": sequences,
    }
