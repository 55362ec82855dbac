"""Training the latent-ODE VAE on BVH clips of one rig.

Every step draws its batch from a generator seeded by (seed, step), so a run resumed
from a checkpoint continues exactly as if it had never stopped.

Started by ``torchrun`` (``WORLD_SIZE`` > 1), training is data-parallel with
DistributedDataParallel: each process draws its own batch, seeded by (seed, step,
rank), gradients are averaged across processes, and process 0 alone writes
checkpoints. The same code runs on CPUs (gloo) and GPUs (NCCL), one or many nodes.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from motionode import features as feat
from motionode.bvh import Clip, read_bvh
from motionode.checkpoint import load_checkpoint, save_checkpoint
from motionode.model import LatentODEVAE, ModelConfig, kl_normal
from motionode.seeds import check_seed
from motionode.torchpose import FeatureFK

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

__all__ = [
    "Distributed",
    "TrainConfig",
    "Trainer",
    "find_clips",
    "load_training_clips",
    "pick_device",
]


@dataclass
class TrainConfig:
    """Training settings; stored in every checkpoint."""

    obs_frames: int = (
        30  # observed frames before the continuation point (1 s at 30 fps)
    )
    pred_frames: int = 45  # frames predicted after it (1.5 s at 30 fps)
    train_fps: float = 30.0  # clips are strided down to about this rate
    batch_size: int = 64  # windows per step
    steps: int = 6000  # optimiser steps in all
    lr: float = 1e-3  # Adam learning rate at the start (cosine decay to 5%)
    kl_weight: float = 1e-3  # weight of KL(q(z0) || N(0, I))
    fk_weight: float = 10.0  # weight of the mean joint-position error, in metres
    vel_weight: float = 1.0  # weight of the mean joint-velocity error, in m/s
    drop_max: float = 0.5  # each window drops up to this fraction of observed frames
    checkpoint_every: int = 250  # steps between checkpoints
    seed: int = 0  # fixes initial weights and every batch
    units_to_m: float = 0.01  # metres per rig length unit (0.01 for centimetres)
    licence: str = "unknown"  # licence of the training clips, kept in the model
    max_recoveries: int = 5  # non-finite steps in a row before giving up
    amp: bool = True  # bfloat16 autocast of the network on CUDA (CPU: float32)

    def __post_init__(self) -> None:
        for name in (
            "obs_frames",
            "pred_frames",
            "batch_size",
            "steps",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}: expected a whole number >= 1, got {value!r}")
        for name in ("train_fps", "lr", "units_to_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        check_seed(self.seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"train config: unknown keys {sorted(unknown)}; valid: "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        return cls(**data)


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"device: expected auto, cpu, cuda or cuda:N, got {name!r}"
        ) from exc


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a ``torchrun`` job (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Process 0, the one that writes checkpoints and prints."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read torchrun's environment; join the process group if there is one.

        Raises:
            ValueError: torchrun's variables are malformed.
        """
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise ValueError(f"WORLD_SIZE, RANK, LOCAL_RANK: {exc}") from None
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend)
        logger.info("process %d of %d (local %d)", rank, world, local)
        return cls(rank, world, local)

    def device(self, name: str) -> str:
        """The device this process trains on: with CUDA, its own GPU."""
        if (
            self.world_size > 1
            and name in ("auto", "cuda")
            and torch.cuda.is_available()
        ):
            return f"cuda:{self.local_rank}"
        return name

    def any(self, flag: bool, device: torch.device) -> bool:
        """True if ``flag`` is true in any process (every process must call)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def find_clips(inputs: list[str], exclude: list[str] = ()) -> list[Path]:
    """BVH files named by ``inputs`` (files or folders, searched recursively), sorted,
    minus those whose file name matches an ``exclude`` glob pattern."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() == ".bvh")
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"clips: {item!r} is neither a file nor a folder")
    return [p for p in out if not any(fnmatch.fnmatch(p.name, x) for x in exclude)]


def stride_clip(clip: Clip, fps: float) -> Clip:
    """Keep every k-th frame so the rate is near ``fps`` (real frames, no
    resampling), counted back from the last frame, so a continuation of the
    strided clip starts where the clip itself ends."""
    k = max(1, round(clip.fps / fps))
    if k == 1:
        return clip
    first = (clip.num_frames - 1) % k
    return Clip(clip.skeleton, clip.motion[first::k], clip.frame_time * k, clip.source)


@dataclass
class _Data:
    feats: list[np.ndarray]  # per clip (N, D) float32 normalised features
    times: list[np.ndarray]  # per clip (N,) float64 seconds
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))


class Trainer:
    """Owns the model, optimiser, data and checkpoints of one training run."""

    def __init__(
        self,
        clips: list[Clip],
        config: TrainConfig,
        model_config: ModelConfig | None = None,
        device: str = "auto",
        spec: feat.FeatureSpec | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.config = config
        self.dist = dist or Distributed()
        self.device = pick_device(self.dist.device(device))
        self.clips = [stride_clip(c, config.train_fps) for c in clips]
        if spec is not None:
            rig = spec.skel()
            for c in self.clips:
                why = rig.rig_difference(c.skeleton)
                if why is not None:
                    raise ValueError(
                        f"{c.source}: clip's rig differs from the checkpoint's: {why}"
                    )
        self.spec = spec or feat.build_spec(self.clips, config.units_to_m)
        self.model_config = model_config or ModelConfig(feature_dim=self.spec.dim)
        if self.model_config.feature_dim != self.spec.dim:
            raise ValueError(
                f"model config: feature_dim {self.model_config.feature_dim}"
                f" does not match the rig's {self.spec.dim}"
            )
        torch.manual_seed(config.seed)
        self.model = LatentODEVAE(self.model_config).to(self.device)
        self.net: LatentODEVAE | DistributedDataParallel = self.model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Same seed, same initial weights everywhere; DDP also broadcasts them.
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self.fk = FeatureFK(self.spec).to(self.device)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.step = 0
        self.extra_metadata: dict = {}  # more JSON saved with every checkpoint
        self.data = self._prepare()

    def _prepare(self) -> _Data:
        feats, times = [], []
        for c in self.clips:
            ff = feat.encode(self.spec, c)
            feats.append(self.spec.normalize(ff.pose).astype(np.float32))
            times.append(ff.times)
        lengths = np.array([len(f) for f in feats], dtype=np.float64)
        usable = np.where(lengths >= 2, lengths, 0.0)
        if usable.sum() == 0:
            raise ValueError("clips: every clip is shorter than two frames")
        return _Data(feats, times, usable / usable.sum())

    # ------------------------------------------------------------------ batches

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of ``step``: a pure function of (seed, step), and of the rank
        in a multi-process run."""
        cfg = self.config
        key = [cfg.seed, step] + ([self.dist.rank] if self.dist.world_size > 1 else [])
        rng = np.random.default_rng(key)
        B, T, P = cfg.batch_size, cfg.obs_frames, cfg.pred_frames
        D = self.spec.dim
        obs = np.zeros((B, T, D), np.float32)
        obs_valid = np.zeros((B, T), bool)
        obs_t = np.zeros((B, T))
        pred = np.zeros((B, P, D), np.float32)
        pred_valid = np.zeros((B, P), bool)
        pred_t = np.zeros((B, P))
        step_t = 1.0 / cfg.train_fps
        for b in range(B):
            c = rng.choice(len(self.data.feats), p=self.data.weights)
            x, t = self.data.feats[c], self.data.times[c]
            a = int(rng.integers(0, len(x) - 1))
            idx = np.arange(a - T + 1, a + P + 1)
            ok = (idx >= 0) & (idx < len(x))
            safe = np.clip(idx, 0, len(x) - 1)
            # Missing frames get nominal times so every row stays sorted.
            rel = np.where(ok, t[safe] - t[a], (idx - a) * step_t)
            obs[b], pred[b] = x[safe[:T]], x[safe[T:]]
            obs_valid[b], pred_valid[b] = ok[:T], ok[T:]
            obs_t[b], pred_t[b] = rel[:T], rel[T:]
        keep = rng.random((B, T)) >= rng.uniform(0, cfg.drop_max, (B, 1))
        keep[:, -1] = True
        dev = self.device
        as_t = lambda a, dt=None: torch.as_tensor(a, device=dev, dtype=dt)
        return {
            "obs": as_t(obs),
            "obs_valid": as_t(obs_valid),
            "mask": as_t(keep & obs_valid),
            "obs_times": as_t(obs_t, torch.float64),
            "pred": as_t(pred),
            "pred_valid": as_t(pred_valid),
            "pred_times": as_t(pred_t, torch.float64),
        }

    def losses(
        self, batch: dict[str, torch.Tensor], step: int
    ) -> dict[str, torch.Tensor]:
        """Feature, joint-position and KL terms for one batch, and their total."""
        cfg = self.config
        # Reduced to the 64 bits torch takes; the same as unreduced below them.
        gen = torch.Generator(device=self.device).manual_seed(
            (cfg.seed * 1_000_003 + step + 7919 * self.dist.rank) % 2**64
        )
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.amp_enabled
        ):
            out = self.net(
                batch["obs"],
                batch["mask"],
                batch["obs_times"],
                batch["pred_times"],
                generator=gen,
            )
        # Losses and forward kinematics in full precision.
        out = {k: v.float() for k, v in out.items()}
        est = torch.cat([out["recon"], out["pred"]], dim=1)  # (B, T+P, D)
        ref = torch.cat([batch["obs"], batch["pred"]], dim=1)
        valid = torch.cat([batch["obs_valid"], batch["pred_valid"]], dim=1).float()
        n = valid.sum().clamp(min=1.0)
        feat_loss = (((est - ref) ** 2).mean(-1) * valid).sum() / n
        pos_est, pos_ref = self.fk(est), self.fk(ref)  # (B, T+P, J, 3) metres
        dist = (pos_est - pos_ref).norm(dim=-1).mean(-1)  # (B, T+P)
        pos_loss = (dist * valid).sum() / n
        # Joint velocities between consecutive frames: a model that holds a still
        # pose pays for it even where that pose is close on average.
        times = torch.cat([batch["obs_times"], batch["pred_times"]], dim=1)
        dt = (times[:, 1:] - times[:, :-1]).clamp(min=1e-3).to(est.dtype)  # (B, T+P-1)
        vel_err = (pos_est.diff(dim=1) - pos_ref.diff(dim=1)).norm(dim=-1).mean(
            -1
        ) / dt  # (B, T+P-1) m/s
        pair = valid[:, 1:] * valid[:, :-1]
        vel_loss = (vel_err * pair).sum() / pair.sum().clamp(min=1.0)
        kl = kl_normal(out["mean"], out["logvar"]).mean()
        total = (
            feat_loss
            + cfg.fk_weight * pos_loss
            + cfg.vel_weight * vel_loss
            + cfg.kl_weight * kl
        )
        return {
            "total": total,
            "feat": feat_loss,
            "pos_m": pos_loss,
            "vel_m_s": vel_loss,
            "kl": kl,
        }

    @property
    def amp_enabled(self) -> bool:
        """bfloat16 autocast: asked for, and on a GPU that supports it."""
        return (
            self.config.amp
            and self.device.type == "cuda"
            and torch.cuda.is_bf16_supported()
        )

    # ------------------------------------------------------------------ loop

    def _lr(self, step: int) -> float:
        frac = min(step / max(self.config.steps, 1), 1.0)
        return self.config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    def train(
        self,
        checkpoint: str | os.PathLike,
        progress: Callable | None = None,
        clip_names: list[str] | None = None,
    ) -> dict:
        """Run until ``config.steps``, checkpointing to ``checkpoint``.

        A step whose loss is not finite (for example a latent flow driven stiff) is
        reported, and training goes back to the last good checkpoint with half the
        learning rate; after ``max_recoveries`` such steps in a row it stops with
        RuntimeError, leaving that checkpoint intact.

        Returns:
            the last step's loss terms as floats.
        """
        cfg = self.config
        self.clip_names = clip_names or [c.source for c in self.clips]
        last: dict[str, float] = {}
        failures, lr_scale = 0, 1.0
        if self.step == 0 or not Path(checkpoint).exists():
            self.save(checkpoint)
        self.model.train()
        while self.step < cfg.steps:
            for group in self.optim.param_groups:
                group["lr"] = self._lr(self.step) * lr_scale
            try:
                try:
                    terms = self.losses(self.batch(self.step), self.step)
                    problem = (
                        None
                        if torch.isfinite(terms["total"])
                        else f"loss is {float(terms['total'].detach())}"
                    )
                except AssertionError as exc:  # torchdiffeq: step size underflow
                    problem = f"solver: {exc}"
                # Every process hears of a failure before any starts its backward
                # pass, so all go back to the checkpoint together.
                if self.dist.any(problem is not None, self.device):
                    raise FloatingPointError(
                        problem or "a step failed in another process"
                    )
                self.optim.zero_grad(set_to_none=True)
                terms["total"].backward()
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 3.0)
                if not torch.isfinite(norm):
                    raise FloatingPointError("gradient is not finite")
                self.optim.step()
            except FloatingPointError as exc:
                failures += 1
                logger.error(
                    "step %d failed (%s); back to the last good checkpoint %s",
                    self.step,
                    exc,
                    checkpoint,
                )
                if failures > cfg.max_recoveries:
                    raise RuntimeError(
                        f"training diverged {failures} times in a row at step "
                        f"{self.step}; last good checkpoint kept at {checkpoint}"
                    ) from exc
                self.load_state(checkpoint)
                lr_scale *= 0.5
                continue
            failures = 0
            self.step += 1
            last = {k: float(v.detach()) for k, v in terms.items()}
            if progress is not None:
                progress(self.step, last)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save(checkpoint)
        return last

    # ------------------------------------------------------------------ checkpoints

    def metadata(self) -> dict:
        return {
            "world_size": self.dist.world_size,
            "kind": "motionode-model",
            "model_config": self.model_config.to_dict(),
            "feature_spec": self.spec.to_dict(),
            "train_config": self.config.to_dict(),
            "step": self.step,
            "clips": list(getattr(self, "clip_names", [c.source for c in self.clips])),
            "licence": self.config.licence,
            **self.extra_metadata,
        }

    def save(
        self,
        path: str | os.PathLike,
        with_optimizer: bool = True,
        extra: dict | None = None,
    ) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if with_optimizer:
            names = {id(p): n for n, p in self.model.named_parameters()}
            for group in self.optim.param_groups:
                for p in group["params"]:
                    for key, val in self.optim.state.get(p, {}).items():
                        tensors[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(val)
        meta = self.metadata()
        meta.update(extra or {})
        if self.dist.leader:
            save_checkpoint(path, tensors, meta)
        # Nobody reads the checkpoint back before it is complete on disk.
        self.dist.barrier()

    def load_state(self, path: str | os.PathLike) -> None:
        """Restore weights, optimiser state and step from a checkpoint of this run."""
        tensors, meta = load_checkpoint(path, self.device)
        if meta.get("model_config") != self.model_config.to_dict():
            raise ValueError(
                f"{path}: checkpoint has a different model config: "
                f"{meta.get('model_config')}"
            )
        self.model.load_state_dict(
            {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        params = dict(self.model.named_parameters())
        self.optim.state.clear()
        for k, v in tensors.items():
            if k.startswith("optim."):
                name, key = k[6:].rsplit(".", 1)
                self.optim.state[params[name]][key] = v if key != "step" else v.cpu()
        self.step = int(meta["step"])
        logger.info("resumed from %s at step %d", path, self.step)

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        clips: list[Clip],
        device: str = "auto",
        steps: int | None = None,
        dist: Distributed | None = None,
    ) -> Trainer:
        """A trainer restored from ``path``, with the config and features it saved."""
        _, meta = load_checkpoint(path)
        config = TrainConfig.from_dict(meta["train_config"])
        if steps is not None:
            config.steps = steps
        trainer = cls(
            clips,
            config,
            ModelConfig.from_dict(meta["model_config"]),
            device,
            feat.FeatureSpec.from_dict(meta["feature_spec"]),
            dist,
        )
        trainer.load_state(path)
        return trainer


def load_training_clips(paths: list[Path]) -> list[Clip]:
    """Read clips; a file that fails is reported with its path and line."""
    return [read_bvh(p) for p in paths]
