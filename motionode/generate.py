"""Motion in continuous time from a trained model: a pose at any instant, for ever.

A :class:`PoseStream` integrates the latent ODE together with the root's ground-plane
position and heading (the model decodes velocity and turn rate, which the solver
integrates), on a fixed RK4 grid at absolute times ``k / solver_rate``. A pose at a
time between grid points is one shortened RK4 step from the grid point before it, so:

- every pose is a solver state at exactly the asked time, never an interpolation;
- the pose at time t does not depend on which other times were asked for, so
  clients at 24, 60 and 144 fps sharing a seed see the same motion.

The model was trained on windows a second or two long, so a stream is made of
segments: at every whole multiple of ``segment`` seconds the last second of
generated motion is encoded again and a new latent state starts from a posterior
sample drawn from a generator seeded by (seed, segment index). The previous
segment's latent keeps running for half a second beside it, and the pose cross-fades
from the old motion to the new with a weight whose slope is zero at both ends, so
pose and velocity are both continuous across boundaries. Segments are 2 s by
default: each re-encoding loses a little energy, so 1 s segments let motion fade
toward a still pose, while one uninterrupted solve drifts past anything seen in
training within minutes.

A switch (:meth:`PoseStream.switch`) starts a segment early, at a solver step, from
another source's latent, with the same cross-fade, so a live stream can change what
it does without a jump. A source may also be a weighted blend of several sources'
starting latents.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motionode import features as feat
from motionode.bvh import ROTATION_CHANNELS, Clip, Skeleton, read_bvh
from motionode.checkpoint import load_checkpoint, save_checkpoint
from motionode.model import LatentODEVAE, ModelConfig, rk4_step
from motionode.rowwise import block_count, pad_index, pad_rows, run_rows
from motionode.snapshots import (
    SnapshotError,
    digest,
    read_array,
    read_bool,
    read_float,
    read_int,
    read_list,
    read_object,
    read_str,
    write_array,
    write_float,
)
from motionode.torchpose import FeatureChannels
from motionode.train import stride_clip

logger = logging.getLogger(__name__)

__all__ = [
    "MotionModel",
    "PoseStream",
    "assets_dir",
    "channels_together",
    "default_model_path",
    "states_together",
]


MAX_CLIP_FRAMES = 10_000_000  # frames in one exported clip (about 10 GB of channels)


def assets_dir() -> Path:
    """The bundled assets: ``$MOTIONODE_ASSETS`` or the repository's ``assets/``."""
    env = os.environ.get("MOTIONODE_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "assets"


def default_model_path() -> Path:
    return assets_dir() / "default_model.safetensors"


SNAPSHOT_FORMAT = "motionode-posestream/1"
MAX_SNAPSHOT_SWITCHES = 64  # switches one snapshot may carry
MAX_SEED = 2**63 - 1
MAX_STEP = 2**53  # solver steps and segment ordinals
_SNAPSHOT_FIELDS = (
    "format",
    "model",
    "device",
    "latent",
    "features",
    "solver_rate",
    "segment",
    "temperature",
    "seed",
    "blend",
    "components",
    "latest",
    "current",
    "switches",
    "clips",
)
_CURRENT_FIELDS = (
    "start",
    "seed",
    "ordinal",
    "blend",
    "old_tau",
    "state",
    "offset",
    "old_offset",
)


@dataclass
class _Segment:
    """Where one segment starts.

    Attributes:
        state: (2L + 3,) the new latent, the previous segment's latent carried on
            through the blend, and the root's x, z and heading.
        offset: (D,) normalised pose offset fading from the segment start (a seed
            clip's last pose); zero for a re-encoding.
        old_offset: (D,) the previous segment's offset, and ``old_tau`` its
            segment-local time at this segment's start.
        blend: whether the pose starts on the previous segment's motion.
        start: the solver step (absolute) at which the segment starts.
        seed, ordinal: the generator of its draws: the seed of the stream or of
            the latest switch, and the segments since then.
    """

    state: torch.Tensor
    offset: torch.Tensor
    old_offset: torch.Tensor
    old_tau: float = 0.0
    blend: bool = False
    start: int = 0
    seed: int = 0
    ordinal: int = 0


# One part of a blended source: (source name, seed of its draws, weight).
Component = tuple[str, int, float]
MAX_COMPONENTS = 8  # sources in one blend
# Switches of one stream not yet reached by any asked time: each starts half a
# second after the one before, and planning walks them all.
MAX_WAITING_SWITCHES = 16


def _describe(components: Sequence[Component]) -> str:
    """A readable name of a blend, e.g. ``blend(prior#3*0.5,clip:walk#0*0.5)``."""
    parts = [f"{s}#{seed}*{w:g}" for s, seed, w in components]
    return f"blend({','.join(parts)})"


def _write_components(components: Sequence[Component]) -> list[list]:
    """Components as JSON: [source, seed, weight as a hex float] each."""
    return [[name, int(seed), write_float(w)] for name, seed, w in components]


def _read_components(model: MotionModel, field: str, value: Any) -> list[Component]:
    """Components written by :func:`_write_components`, checked against the model
    (known sources, weights in (0, 1] summing to 1) but kept exactly as written."""
    items = read_list(field, value, MAX_COMPONENTS)
    if not items:
        raise SnapshotError(field, "expected at least one component")
    known = model.sources()
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 3):
            raise SnapshotError(f"{field}[{i}]", "expected [source, seed, weight]")
        name = read_str(f"{field}[{i}][0]", item[0])
        if name not in known:
            raise SnapshotError(
                f"{field}[{i}][0]", f"this model has no source {name!r}"
            )
        seed = read_int(f"{field}[{i}][1]", item[1], 0, MAX_SEED)
        weight = read_float(f"{field}[{i}][2]", item[2], 0.0, 1.0)
        if weight <= 0:
            raise SnapshotError(f"{field}[{i}][2]", "expected a weight > 0")
        out.append((name, seed, weight))
    total = math.fsum(w for _, _, w in out)
    if abs(total - 1.0) > 1e-6:
        raise SnapshotError(field, f"weights sum to {total:g}, expected 1")
    return out


class MotionModel:
    """A trained model ready to generate: network in float64, rig, seed clips."""

    def __init__(
        self,
        net: LatentODEVAE,
        spec: feat.FeatureSpec,
        metadata: dict,
        seeds: dict[str, Clip] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device, torch.float64).eval()
        self.spec = spec
        self.metadata = metadata
        self.skeleton: Skeleton = spec.skel()
        self.train_fps = float(metadata.get("train_config", {}).get("train_fps", 30.0))
        self.obs_frames = int(metadata.get("train_config", {}).get("obs_frames", 30))
        self._mean = torch.tensor(spec.mean, dtype=torch.float64, device=self.device)
        self._std = torch.tensor(spec.std, dtype=torch.float64, device=self.device)
        self._feature_channels: FeatureChannels | None = None
        self.seeds: dict[str, Clip] = {}
        for name, clip in (seeds or {}).items():
            self.add_seed(name, clip)
        # The prior is the aggregate posterior: an even mixture of the posteriors
        # q(z | window) of training windows, (N, L) means and standard deviations.
        # With a small KL weight N(0, I) is not where the decoder learnt to make
        # motion, and a single Gaussian fitted to the windows falls between the
        # styles and gives near-still poses.
        L = net.config.latent_dim
        self.prior_mean = torch.zeros(1, L, dtype=torch.float64, device=self.device)
        self.prior_std = torch.ones(1, L, dtype=torch.float64, device=self.device)
        self._fingerprint: str | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        seeds: list[str | os.PathLike] | None = None,
        device: str | torch.device = "cpu",
    ) -> MotionModel:
        """Load a checkpoint (default: the bundled model).

        Args:
            seeds: BVH clips usable as ``clip:<stem>`` sources; by default the
                bundled clips in ``assets/clips`` that match the model's rig.
        """
        path = Path(path) if path is not None else default_model_path()
        tensors, meta = load_checkpoint(path, device)
        if meta.get("kind") != "motionode-model":
            raise ValueError(f"{path}: not a motionode model checkpoint")
        net = LatentODEVAE(ModelConfig.from_dict(meta["model_config"]))
        net.load_state_dict(
            {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        model = cls(
            net, feat.FeatureSpec.from_dict(meta["feature_spec"]), meta, device=device
        )
        if "prior.mean" in tensors:
            model.prior_mean = tensors["prior.mean"].to(model.device, torch.float64)
            model.prior_std = tensors["prior.std"].to(model.device, torch.float64)
        explicit = seeds is not None
        if seeds is None:
            seeds = sorted((assets_dir() / "clips").glob("*.bvh"))
        for p in seeds:
            try:
                model.add_seed(Path(p).stem, read_bvh(p))
            except ValueError as exc:
                if explicit:
                    raise
                logger.info("bundled clip %s skipped: %s", p, exc)
        return model

    def check_rig(self, clip: Clip) -> None:
        """Raise ValueError, naming the clip, unless it is this model's rig."""
        why = self.skeleton.rig_difference(clip.skeleton)
        if why is not None:
            raise ValueError(
                f"{clip.source}: clip's rig differs from the model's: {why}"
            )

    def add_seed(self, name: str, clip: Clip) -> None:
        """Make ``clip`` usable as the source ``clip:<name>``; it must be this rig."""
        self.check_rig(clip)
        if clip.num_frames < 2:
            raise ValueError(f"{clip.source}: a seed clip needs at least two frames")
        self.seeds[name] = clip

    def sources(self) -> list[str]:
        """Names :meth:`open` accepts: ``prior`` and ``clip:<name>`` per seed clip."""
        return ["prior"] + [f"clip:{n}" for n in sorted(self.seeds)]

    def components(
        self, source: str | Sequence[Component], seed: int = 0
    ) -> list[Component]:
        """A source as a checked list of (source, seed, weight) components.

        Args:
            source: a name from :meth:`sources` (weight 1, drawn with ``seed``),
                or 2 to ``MAX_COMPONENTS`` components whose weights are positive
                and sum to 1 (within 1e-6; they are rescaled to sum exactly 1).

        Raises:
            ValueError: an unknown source, or weights that do not sum to 1.
        """
        if isinstance(source, str):
            source = [(source, seed, 1.0)]
        elif not 2 <= len(source) <= MAX_COMPONENTS:
            raise ValueError(
                f"source: a blend needs 2 to {MAX_COMPONENTS} components, "
                f"got {len(source)}"
            )
        known = self.sources()
        for name, _, weight in source:
            if name not in known:
                raise ValueError(f"source: unknown {name!r}; known: {known}")
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"weight of {name!r}: expected > 0, got {weight!r}")
        total = math.fsum(w for _, _, w in source)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"source: weights sum to {total:g}, expected 1")
        return [(name, int(s), float(w) / total) for name, s, w in source]

    def open(
        self,
        source: str | Sequence[Component] = "prior",
        seed: int = 0,
        segment: float = 2.0,
        temperature: float = 1.0,
    ) -> PoseStream:
        """A new stream; ``seed`` fixes every random draw, so equal arguments give
        equal motion.

        Args:
            source: a name from :meth:`sources`, or a blend: (source, seed, weight)
                components whose latents are mixed by weight (see
                :meth:`components`).
        """
        return PoseStream(self, source, seed, segment, temperature)

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write weights (float32, no optimiser state), fitted prior and metadata."""
        tensors = {f"model.{k}": v.float() for k, v in self.net.state_dict().items()}
        tensors["prior.mean"] = self.prior_mean.float()
        tensors["prior.std"] = self.prior_std.float()
        meta = {**self.metadata, **(extra or {})}
        save_checkpoint(path, tensors, meta)

    @torch.no_grad()
    def fit_prior(
        self, clips: list[Clip], stride: int = 5, max_windows: int = 2048
    ) -> int:
        """Make the prior the mixture of the posteriors of ``clips``' windows (one
        window start every ``stride`` frames at the training rate; an evenly spaced
        subset when there are more than ``max_windows``).

        Returns:
            the number of windows kept.
        """
        means, stds = [], []
        for clip in clips:
            x, t = self.windows(clip, stride)
            if len(x):
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=self.device)
                mean, logvar = self.net.encode(x, mask, t)
                means.append(mean)
                stds.append(torch.exp(0.5 * logvar))
        if not means:
            raise ValueError("clips: none is long enough for one observation window")
        mean, std = torch.cat(means), torch.cat(stds)  # (N, L) each
        keep = torch.linspace(0, len(mean) - 1, min(len(mean), max_windows))
        keep = keep.round().long().unique()
        self.prior_mean, self.prior_std = mean[keep], std[keep]
        self._fingerprint = None
        return len(keep)

    def fingerprint(self) -> str:
        """SHA-256 (hexadecimal) of everything a stream's motion depends on besides
        its seed clips: the network's weights as the model computes with them
        (float64), the prior, the feature spec, the training rate and window.
        Computed once; :meth:`fit_prior` forgets it. A snapshot carries it, so one
        taken with another model is refused."""
        if self._fingerprint is None:
            config = {
                "model_config": asdict(self.net.config),
                "feature_spec": self.spec.to_dict(),
                "train_fps": self.train_fps,
                "obs_frames": self.obs_frames,
            }
            parts = [json.dumps(config, sort_keys=True, default=str).encode()]
            tensors = dict(self.net.state_dict())
            tensors["prior.mean"], tensors["prior.std"] = (
                self.prior_mean,
                self.prior_std,
            )
            for name in sorted(tensors):
                value = tensors[name].detach().to("cpu", torch.float64).contiguous()
                parts += [name.encode(), str(tuple(value.shape)).encode()]
                parts.append(value.numpy().astype("<f8").tobytes())
            self._fingerprint = digest(*parts)
        return self._fingerprint

    def clip_fingerprint(self, name: str) -> str:
        """SHA-256 (hexadecimal) of the seed clip ``clip:<name>``'s motion and
        frame time: what a stream switching to it draws from."""
        clip = self.seeds[name]
        motion = np.ascontiguousarray(clip.motion, dtype="<f8")
        return digest(motion.tobytes(), float(clip.frame_time).hex().encode())

    def windows(
        self, clip: Clip, stride: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Observation windows of a clip at the training rate: normalised features
        (W, T, D) and times relative to each window's last frame (W, T). Windows
        start every ``stride`` frames (default: back to back)."""
        c = stride_clip(clip, self.train_fps)
        ff = feat.encode(self.spec, c)
        x = self.spec.normalize(ff.pose)
        T = self.obs_frames
        step = stride or T
        starts = np.arange(0, len(x) - T + 1, step)
        idx = starts[:, None] + np.arange(T)  # (W, T)
        t = ff.times[idx] - ff.times[idx[:, -1:]]
        return (
            torch.tensor(x[idx], device=self.device).reshape(
                len(starts), T, self.spec.dim
            ),
            torch.tensor(t, device=self.device).reshape(len(starts), T),
        )

    # ------------------------------------------------------------ model pieces

    def feature_channels(self) -> FeatureChannels:
        """Features to channel rows in torch, built once."""
        if self._feature_channels is None:
            self._feature_channels = FeatureChannels(self.spec)
        return self._feature_channels

    def decode_norm(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised poses (..., D) of latents (..., L), rows batch-independent."""
        return run_rows(self.net.decoder, z)

    def dynamics(self, z: torch.Tensor) -> torch.Tensor:
        """dz/dt (..., L) of latents (..., L), rows batch-independent."""
        return run_rows(lambda rows: self.net.dynamics(None, rows), z)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._std + self._mean

    def clip_window(self, clip: Clip) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Normalised features of a clip's last observation window, their times
        relative to its last frame, and where its root ends up."""
        clip = stride_clip(clip, self.train_fps)
        ff = feat.encode(self.spec, clip)
        n = min(self.obs_frames, len(ff.pose))
        x = torch.tensor(self.spec.normalize(ff.pose[-n:]), device=self.device)
        t = torch.tensor(ff.times[-n:] - ff.times[-1], device=self.device)
        end = {"xz": ff.root_xz[-1], "heading": float(ff.heading[-1])}
        return x, t, end

    def posterior(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """A latent sample (L,) given normalised frames (T, D) at times (T,) <= 0;
        the posterior mean when ``generator`` is None."""
        return self.posterior_many(x[None], t[None], [generator], [temperature])[0]

    @torch.no_grad()
    def posterior_many(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        generators: Sequence[torch.Generator | None],
        temperatures: Sequence[float],
    ) -> torch.Tensor:
        """Latent samples (B, L) of B windows, frames (B, T, D) at times (B, T) <= 0,
        each drawn with its own generator (its posterior mean for None) and
        temperature, every row the same whatever else is in the batch."""
        B, T = t.shape
        mask = torch.ones(block_count(B), T, dtype=torch.bool, device=self.device)
        mean, logvar = self.net.encode(pad_rows(x), mask, pad_rows(t))  # (M, L) each
        noise = torch.zeros_like(mean)  # (M, L)
        temps = torch.zeros(len(mean), 1, dtype=mean.dtype, device=self.device)
        for i, (gen, temp) in enumerate(zip(generators, temperatures)):
            if gen is not None:
                draw = torch.randn((1, mean.shape[1]), generator=gen, dtype=mean.dtype)
                noise[i], temps[i] = draw[0].to(self.device), temp
        return (mean + temps * noise * torch.exp(0.5 * logvar))[:B]


class PoseStream:
    """Poses of one generated motion at any times >= 0 (seconds).

    Times may be asked in any order and any spacing; asking only extends the solved
    range, it never changes an answer. :meth:`switch` changes the source from a
    time later than any asked so far, so it too leaves every answer given standing.
    """

    def __init__(
        self,
        model: MotionModel,
        source: str | Sequence[Component],
        seed: int,
        segment: float,
        temperature: float,
    ) -> None:
        self._configure(model, model.components(source, int(seed)), seed, segment)
        self.source = source if isinstance(source, str) else _describe(self.components)
        self.temperature = float(temperature)
        self._segments: list[_Segment] = [self._first_segment()]
        self._starts: list[int] = [0]  # solver step at which each segment starts

    def _configure(
        self,
        model: MotionModel,
        components: list[Component],
        seed: int,
        segment: float,
    ) -> None:
        """Settings shared by a new stream and a restored one."""
        rate = model.net.config.solver_rate
        steps = segment * rate
        if not (segment > 0 and abs(steps - round(steps)) < 1e-9 and round(steps) >= 1):
            raise ValueError(
                f"segment: {segment} s is not a whole number of solver "
                f"steps (1/{rate} s)"
            )
        self.model = model
        self.seed = int(seed)
        self.components = components
        self.segment = float(segment)
        self.rate = float(rate)
        self.steps_per_segment = round(steps)
        self.latent = model.net.config.latent_dim
        self.blend = min(0.5, segment / 2)  # seconds over which segments cross-fade
        self.blend_steps = math.ceil(self.blend * self.rate - 1e-9)
        self.latest = -math.inf  # latest time asked for, seconds
        # Solver step -> (components, seed) of each source switch, applied or not.
        # TODO: kept for the stream's life and scanned on every pose lookup, so a
        # stream switched thousands of times computes each pose a little slower.
        self._switches: dict[int, tuple[tuple[Component, ...], int]] = {}
        self._grid: dict[int, torch.Tensor] = {}  # segment -> (S + 1, 2L + 3) states
        # First solver step this stream can answer: 0, or a restored snapshot's
        # segment start (the segments before it are not known).
        self.origin = 0

    @property
    def skeleton(self) -> Skeleton:
        return self.model.skeleton

    # ------------------------------------------------------------ segments

    def _generator(self, seed: int, ordinal: int) -> torch.Generator:
        return torch.Generator().manual_seed(
            (seed * 1_000_003 + ordinal * 7919) % (2**63)
        )

    def _start(
        self, components: Sequence[Component]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent (L,), normalised pose offset (D,) and root (3,) a source starts
        from: the weighted means of its components' latents and offsets, and the
        root of its heaviest component."""
        m = self.model
        dev, L = m.device, self.latent
        z = torch.zeros(L, dtype=torch.float64, device=dev)
        offset = torch.zeros(m.spec.dim, dtype=torch.float64, device=dev)
        root, heaviest = None, -1.0
        for source, seed, weight in components:
            gen = self._generator(seed, 0)
            if source == "prior":
                pick = int(torch.randint(len(m.prior_mean), (1,), generator=gen))
                eps = torch.randn(L, generator=gen, dtype=torch.float64).to(dev)
                z_one = m.prior_mean[pick] + self.temperature * m.prior_std[pick] * eps
                offset_one = torch.zeros_like(offset)
                root_one = torch.zeros(3, dtype=torch.float64, device=dev)
            else:
                x, t, end = m.clip_window(m.seeds[source[5:]])
                z_one = m.posterior(x, t, gen, self.temperature)
                with torch.no_grad():
                    offset_one = x[-1] - m.decode_norm(z_one)
                root_one = torch.tensor(
                    [*end["xz"], end["heading"]], dtype=torch.float64, device=dev
                )
            z = z + weight * z_one
            offset = offset + weight * offset_one
            if weight > heaviest:
                root, heaviest = root_one, weight
        return z, offset, root

    def _first_segment(self) -> _Segment:
        z, offset, root = self._start(self.components)
        state = torch.cat([z, torch.zeros_like(z), root])
        return _Segment(state, offset, torch.zeros_like(offset), seed=self.seed)

    def _boundary_after(self, start: int) -> int:
        """Solver step at which the segment starting at step ``start`` ends."""
        later = [k for k in self._switches if k > start]
        return min([start + self.steps_per_segment, *later])

    def _planned_start(self, step: int) -> int:
        """Solver step at which the segment holding ``step`` starts, made or not."""
        if step < self._starts[-1]:
            return self._starts[bisect.bisect_right(self._starts, step) - 1]
        start = self._starts[-1]
        while (nxt := self._boundary_after(start)) <= step:
            start = nxt
        return start

    def _locate(self, step: int) -> int:
        """Index of the segment holding solver step ``step``, made if need be."""
        _extend([(self, step)])
        return bisect.bisect_right(self._starts, step) - 1

    def switch(self, source: str | Sequence[Component], seed: int, at: float) -> float:
        """Change the source from time ``at`` on, cross-fading into it.

        The old latent keeps running while the pose's weight moves from its motion
        to the new source's over ``blend`` seconds, with zero slope at both ends,
        so pose and velocity stay continuous. The root carries on where it is.

        The switch starts at the first solver step at or after ``at`` that is later
        than every time asked so far (nothing already answered changes) and at
        which no other cross-fade is under way.

        Args:
            source: a source name or (source, seed, weight) components.
            seed: seed of the new source's draws and of its later segments.
            at: time in seconds, >= 0.

        Returns:
            the time the cross-fade starts, seconds.

        Raises:
            ValueError: an unknown source or a bad time.
        """
        if not (math.isfinite(at) and at >= 0):
            raise ValueError(f"at: expected a time >= 0 in seconds, got {at!r}")
        components = self.model.components(source, int(seed))
        asked = math.floor(self.latest * self.rate + 1e-9) if self.latest >= 0 else 0
        waiting = sum(1 for k in self._switches if k > asked)
        if waiting >= MAX_WAITING_SWITCHES:
            raise ValueError(
                f"switch: {waiting} switches are already waiting to start, the most "
                f"a stream takes; ask for poses past them first"
            )
        step = max(
            math.ceil(at * self.rate - 1e-9),
            math.floor(self.latest * self.rate + 1e-9) + 1 if self.latest >= 0 else 1,
        )
        if self._switches:
            step = max(step, max(self._switches) + self.blend_steps)
        # Where the step falls among the segments planned so far (none are made).
        start = self._starts[-1]
        while (nxt := self._boundary_after(start)) <= step:
            start = nxt
        if 0 < start < step < start + self.blend_steps:
            step = start + self.blend_steps  # wait for that cross-fade to finish
        self._switches[step] = (tuple(components), int(seed))
        logger.debug("stream %s: switch to %s at step %d", self.source, source, step)
        return step / self.rate

    # ------------------------------------------------------------ snapshots

    def snapshot(self, at: float | None = None) -> dict:
        """What this stream's future depends on, as a JSON-safe dict: restored
        with :meth:`restore`, it answers every time from the start of the segment
        holding ``at`` on exactly as this stream does (see :mod:`motionode.snapshots`
        for how float64 values are written).

        It holds that segment's start (its state (2L + 3,), pose offsets (D,)
        each, blend, start step, seed and ordinal), the switches at or after it
        (and the latest one, which places later switches), the source, settings,
        the latest time asked, the model's fingerprint and those of the seed
        clips the switches draw from. Nothing is solved: the segment is the
        latest one made that starts at or before ``at``.

        Args:
            at: a time in seconds (default: the latest asked, or 0), at or after
                :attr:`origin`'s time.

        Raises:
            ValueError: a bad time.
        """
        if at is None:
            at = max(self.latest, self.origin / self.rate, 0.0)
        if not (math.isfinite(at) and at >= 0):
            raise ValueError(f"at: expected a time >= 0 in seconds, got {at!r}")
        step = math.floor(at * self.rate + 1e-9)
        if step < self.origin:
            raise ValueError(
                f"at: {at:g} s is before {self.origin / self.rate:g} s, where this "
                "stream's restored snapshot starts"
            )
        seg = self._segments[bisect.bisect_right(self._starts, step) - 1]
        keep = sorted(k for k in self._switches if k >= seg.start)
        if self._switches and max(self._switches) not in keep:
            keep.insert(0, max(self._switches))
        switches = [
            {
                "step": k,
                "seed": self._switches[k][1],
                "components": _write_components(self._switches[k][0]),
            }
            for k in keep
        ]
        clips = sorted(
            {
                name[5:]
                for k in keep
                for name, _, _ in self._switches[k][0]
                if name.startswith("clip:")
            }
        )
        return {
            "format": SNAPSHOT_FORMAT,
            "model": self.model.fingerprint(),
            "device": self.model.device.type,
            "latent": self.latent,
            "features": self.model.spec.dim,
            "solver_rate": write_float(self.rate),
            "segment": write_float(self.segment),
            "temperature": write_float(self.temperature),
            "seed": self.seed,
            "blend": not isinstance(self.source, str)
            or self.source.startswith("blend("),
            "components": _write_components(self.components),
            "latest": write_float(self.latest) if self.latest >= 0 else None,
            "current": {
                "start": seg.start,
                "seed": seg.seed,
                "ordinal": seg.ordinal,
                "blend": seg.blend,
                "old_tau": write_float(seg.old_tau),
                "state": write_array(seg.state.cpu().numpy()),
                "offset": write_array(seg.offset.cpu().numpy()),
                "old_offset": write_array(seg.old_offset.cpu().numpy()),
            },
            "switches": switches,
            "clips": {name: self.model.clip_fingerprint(name) for name in clips},
        }

    @classmethod
    def restore(
        cls, model: MotionModel, snapshot: Any, field: str = "snapshot"
    ) -> PoseStream:
        """A stream rebuilt from :meth:`snapshot`'s dict: for every time from its
        segment's start on (its :attr:`origin`) it gives the original's answers bit
        for bit, and switches the original had planned still happen. Earlier
        times are refused.

        Args:
            field: the name errors give the snapshot (e.g. its place in a request).

        Raises:
            SnapshotError: (a ValueError) naming the field: a damaged snapshot, or
                one taken with another model, rig, device or seed clip.
        """
        snap = read_object(field, snapshot, _SNAPSHOT_FIELDS)
        if snap["format"] != SNAPSHOT_FORMAT:
            raise SnapshotError(
                f"{field}.format",
                f"expected {SNAPSHOT_FORMAT!r}, "
                f"got {read_str(f'{field}.format', snap['format'])!r}",
            )
        mine = model.fingerprint()
        if read_str(f"{field}.model", snap["model"], 64) != mine:
            raise SnapshotError(
                f"{field}.model",
                f"taken with another model (fingerprint {snap['model'][:12]}...), "
                f"not this one ({mine[:12]}...)",
            )
        if read_str(f"{field}.device", snap["device"], 32) != model.device.type:
            raise SnapshotError(
                f"{field}.device",
                f"taken on {snap['device']!r}, restored on {model.device.type!r}; "
                "the motion would differ by rounding",
            )
        L, D = model.net.config.latent_dim, model.spec.dim
        for name, size in (("latent", L), ("features", D)):
            if read_int(f"{field}.{name}", snap[name], 0, 2**31) != size:
                raise SnapshotError(
                    f"{field}.{name}",
                    f"expected {size} for this model, got {snap[name]}",
                )
        rate = model.net.config.solver_rate
        if read_float(f"{field}.solver_rate", snap["solver_rate"]) != rate:
            raise SnapshotError(
                f"{field}.solver_rate", f"expected {rate:g} for this model"
            )
        segment = read_float(f"{field}.segment", snap["segment"], 0.0, 3600.0)
        temperature = read_float(f"{field}.temperature", snap["temperature"], 0.0, 1e3)
        seed = read_int(f"{field}.seed", snap["seed"], 0, MAX_SEED)
        blend = read_bool(f"{field}.blend", snap["blend"])
        components = _read_components(model, f"{field}.components", snap["components"])
        if not blend and len(components) != 1:
            raise SnapshotError(
                f"{field}.blend", "false, but the source has several components"
            )
        latest = snap["latest"]
        latest = (
            -math.inf if latest is None else read_float(f"{field}.latest", latest, 0.0)
        )

        cur = read_object(f"{field}.current", snap["current"], _CURRENT_FIELDS)
        where = f"{field}.current"
        start = read_int(f"{where}.start", cur["start"], 0, MAX_STEP)
        seg_seed = read_int(f"{where}.seed", cur["seed"], 0, MAX_SEED)
        ordinal = read_int(f"{where}.ordinal", cur["ordinal"], 0, MAX_STEP)
        seg_blend = read_bool(f"{where}.blend", cur["blend"])
        old_tau = read_float(f"{where}.old_tau", cur["old_tau"], 0.0, 3600.0)
        arrays = {
            name: torch.tensor(
                read_array(f"{where}.{name}", cur[name], size), device=model.device
            )
            for name, size in (("state", 2 * L + 3), ("offset", D), ("old_offset", D))
        }

        where = f"{field}.switches"
        switches: dict[int, tuple[tuple[Component, ...], int]] = {}
        for i, item in enumerate(
            read_list(where, snap["switches"], MAX_SNAPSHOT_SWITCHES)
        ):
            item = read_object(f"{where}[{i}]", item, ("step", "seed", "components"))
            step = read_int(f"{where}[{i}].step", item["step"], 1, MAX_STEP)
            if step in switches:
                raise SnapshotError(f"{where}[{i}].step", f"{step} is given twice")
            switches[step] = (
                tuple(
                    _read_components(
                        model, f"{where}[{i}].components", item["components"]
                    )
                ),
                read_int(f"{where}[{i}].seed", item["seed"], 0, MAX_SEED),
            )

        clips = snap["clips"]
        if not isinstance(clips, dict) or len(clips) > MAX_COMPONENTS * len(switches):
            raise SnapshotError(
                f"{field}.clips", "expected an object of seed clip fingerprints"
            )
        needed = {
            name[5:]
            for parts, _ in switches.values()
            for name, _, _ in parts
            if name.startswith("clip:")
        }
        if set(clips) != needed:
            raise SnapshotError(
                f"{field}.clips",
                f"expected fingerprints of {sorted(needed)}, "
                f"got {sorted(map(str, clips))}",
            )
        for name in sorted(needed):
            given = read_str(f"{field}.clips.{name}", clips[name], 64)
            if given != model.clip_fingerprint(name):
                raise SnapshotError(
                    f"{field}.clips.{name}",
                    "the seed clip differs from this server's clip of that name",
                )

        stream = cls.__new__(cls)
        try:
            stream._configure(model, components, seed, segment)
        except ValueError as exc:
            raise SnapshotError(f"{field}.segment", str(exc)) from None
        stream.temperature = temperature
        stream.source = components[0][0] if not blend else _describe(components)
        stream.latest = latest
        stream._switches = switches
        seg = _Segment(
            arrays["state"],
            arrays["offset"],
            arrays["old_offset"],
            old_tau,
            seg_blend,
            start,
            seg_seed,
            ordinal,
        )
        stream._segments = [seg]
        stream._starts = [start]
        stream.origin = start
        return stream

    def _pose(self, seg: _Segment, tau, y: torch.Tensor) -> torch.Tensor:
        """Normalised pose (D,) at segment-local time ``tau`` of one state (S,)."""
        rows = _Rows.of(self.model, [(self, seg)])
        tau = torch.as_tensor(tau, dtype=torch.float64, device=y.device)
        return _pose_rows(self.model, rows, pad_rows(tau[None]), pad_rows(y[None]))[0]

    def _field(self, seg: _Segment):
        """The augmented vector field of one segment, in segment-local time, for
        one state: f(tau (), y (S,)) -> (S,)."""
        rows = _Rows.of(self.model, [(self, seg)])
        f = _field_rows(self.model, rows)

        def one(tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            tau = torch.as_tensor(tau, dtype=torch.float64, device=y.device)
            return f(pad_rows(tau[None]), pad_rows(y[None]))[0]

        return one

    def _grid_to(self, index: int, step: int) -> list[torch.Tensor]:
        """Grid states of segment ``index`` from its start to segment-local solver
        step ``step`` at least (fewer at the segment's end)."""
        return _advance([(self, index, step)])[0]

    # ------------------------------------------------------------ queries

    def _state_at(self, t: float) -> tuple[_Segment, float, torch.Tensor]:
        """Segment, segment-local time and state (2L + 3,) at time ``t``."""
        (batch,) = list(_rounds([(self, np.array([t]))]))
        _, pairs, tau, y = batch
        return pairs[0][1], float(tau[0]), y[0]

    def _check_times(self, times: np.ndarray) -> np.ndarray:
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if len(times) and not (np.isfinite(times).all() and times.min() >= 0):
            raise ValueError("times: every time must be finite and >= 0")
        if (
            self.origin
            and len(times)
            and math.floor(times.min() * self.rate + 1e-9) < self.origin
        ):
            raise ValueError(
                f"times: {times.min():g} s is before {self.origin / self.rate:g} s, "
                "where this stream's restored snapshot starts"
            )
        return times

    def states(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pose features (T, D) and root states (T, 3) = (x, z, heading) at
        ``times``."""
        return states_together([(self, times)])[0]

    def _velocity(self, seg: _Segment, tau: float, y: torch.Tensor) -> torch.Tensor:
        """Time derivative (C,) of the principal channel row at segment time tau.

        A Jacobian-vector product through decoder, cross-fade and channel decoding,
        with the state's tangent its ODE derivative dy/dt and segment time's tangent
        1 (the offsets' fade and the blend weight depend on it directly). It is
        taken as the derivative of a vector-Jacobian product in its vector, two
        reverse passes: exact like forward mode, and several times faster here.
        """
        m, L = self.model, self.latent
        decode = m.feature_channels()
        with torch.enable_grad():
            tau_t = torch.tensor(tau, dtype=torch.float64, device=y.device)
            tau_t.requires_grad_(True)
            y = y.detach().clone().requires_grad_(True)
            with torch.no_grad():
                dy = self._field(seg)(tau_t, y)  # (2L + 3,)
            pose = m.denormalize(self._pose(seg, tau_t, y))  # (D,)
            channels = decode(pose, y[2 * L :])  # (C,)
            u = torch.zeros_like(channels, requires_grad=True)
            # u . J, as a function of u; its gradient along (1, dy) is J (1, dy).
            u_tau, u_y = torch.autograd.grad(channels, (tau_t, y), u, create_graph=True)
            (rate,) = torch.autograd.grad(u_tau + u_y @ dy, u)
        return rate

    def velocities_at(self, times: np.ndarray) -> np.ndarray:
        """Exact time derivatives (T, C) of ``channels_at(times, continuous=False)``,
        in channel units per second (degrees or rig units).

        They come from the ODE (dz/dt of the dynamics, and the root's velocity and
        turn rate) carried through the decoder by a Jacobian-vector product (see
        :meth:`_velocity`), not from differences of poses. At gimbal lock (a middle
        angle of +-90 degrees) the Euler angles, and so their derivatives, are not
        defined.
        """
        times = self._check_times(times)
        rates = np.zeros((len(times), self.skeleton.num_channels))
        # TODO: derivatives are taken one time at a time (autograd per row), so
        # streams with velocities are not batched with the others.
        for positions, pairs, tau, y in _rounds([(self, times)]):
            for i, (_, seg), tau_i, y_i in zip(positions[0], pairs, tau.tolist(), y):
                rates[i] = self._velocity(seg, tau_i, y_i).detach().cpu().numpy()
        return rates

    def _flip_alternates(
        self, unwrapped: np.ndarray, principal: np.ndarray, rates: np.ndarray
    ) -> None:
        """Negate middle-angle rates (T, C) where unwrapping chose a joint's other
        Euler triple (a + 180, 180 - b, c + 180), whose middle angle runs backwards."""
        sk = self.skeleton
        starts = sk.channel_starts()
        for j, names in enumerate(sk.channels):
            rot = [k for k, n in enumerate(names) if n in ROTATION_CHANNELS]
            if len(rot) != 3:
                continue
            first, middle = starts[j] + rot[0], starts[j] + rot[1]
            turn = (unwrapped[:, first] - principal[:, first] + 180.0) % 360.0 - 180.0
            rates[np.abs(turn) > 90.0, middle] *= -1.0

    def channels_at(
        self, times: np.ndarray, continuous: bool = True, velocities: bool = False
    ) -> np.ndarray:
        """BVH channel rows (T, C) of the model's rig at ``times`` (seconds).

        With ``continuous``, Euler angles are unwrapped across the asked times in
        time order (no 360-degree jumps: what a clip wants). Without it, every row
        holds the principal angles of its rotations alone, so a row is a function of
        its time only, whatever else was asked (what a live stream wants).

        With ``velocities``, each row (T, 2C) also holds, after its C values, their
        exact time derivatives per second (see :meth:`velocities_at`).
        """
        if velocities:
            rows = self.channels_at(times, continuous)  # (T, C)
            rates = self.velocities_at(times)  # (T, C)
            if continuous and len(rows):
                principal = self.channels_at(times, continuous=False)
                self._flip_alternates(rows, principal, rates)
            return np.concatenate([rows, rates], axis=1)  # (T, 2C)
        poses, roots = self.states(times)
        if len(poses) == 0:
            return np.zeros((0, self.skeleton.num_channels))
        if not continuous:
            return feat.decode(
                self.model.spec, poses, roots[:, :2], roots[:, 2], continuous=False
            )
        order = np.argsort(
            np.asarray(times, dtype=np.float64).reshape(-1), kind="stable"
        )
        rows = np.empty((len(poses), self.skeleton.num_channels))
        rows[order] = feat.decode(
            self.model.spec, poses[order], roots[order, :2], roots[order, 2]
        )
        return rows

    def positions_at(self, times: np.ndarray) -> np.ndarray:
        """World joint positions (T, J, 3) in metres at ``times``."""
        rows = self.channels_at(times, continuous=False)
        clip = Clip(self.skeleton, rows, 1.0)
        return clip.world_positions() * self.model.spec.units_to_m

    def clip(self, duration: float, fps: float) -> Clip:
        """Frames at exactly ``i / fps`` for ``duration`` seconds, as a clip."""
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps: must be a positive number, got {fps}")
        if not (duration >= 0 and math.isfinite(duration)):
            raise ValueError(f"duration: must be >= 0 seconds, got {duration}")
        n = math.floor(duration * fps + 1e-9) + 1
        if n > MAX_CLIP_FRAMES:
            raise ValueError(
                f"duration x fps: {duration:g} s at {fps:g} fps is {n} "
                f"frames; at most {MAX_CLIP_FRAMES} fit in one clip"
            )
        times = np.arange(n, dtype=np.float64) / fps
        return Clip(
            self.skeleton,
            self.channels_at(times),
            1.0 / fps,
            f"motionode:{self.source}:seed{self.seed}",
        )


# ---------------------------------------------------------------- many streams

MAX_ROUND = 4096  # times of one stream solved in one round (bounds a round's memory)


@dataclass
class _Rows:
    """Per-row constants of the vector field of a batch of (stream, segment) rows,
    padded to a whole number of row blocks (see :mod:`motionode.rowwise`).

    Attributes:
        offset, old_offset: (M, D) the segment's and its predecessor's pose offset.
        old_tau: (M,) float64 the predecessor's segment time at the segment start.
        blend: (M,) float64 seconds of cross-fade from the predecessor; 0 for none.
    """

    offset: torch.Tensor
    old_offset: torch.Tensor
    old_tau: torch.Tensor
    blend: torch.Tensor

    @classmethod
    def of(cls, model: MotionModel, pairs: Sequence[tuple[PoseStream, _Segment]]):
        segs = [seg for _, seg in pairs]
        scalars = torch.tensor(
            [
                [seg.old_tau, stream.blend if seg.blend else 0.0]
                for stream, seg in pairs
            ],
            dtype=torch.float64,
            device=model.device,
        )  # (n, 2)
        return cls(
            pad_rows(torch.stack([s.offset for s in segs])),
            pad_rows(torch.stack([s.old_offset for s in segs])),
            pad_rows(scalars[:, 0]),
            pad_rows(scalars[:, 1]),
        )


def _fade(model: MotionModel, tau: torch.Tensor) -> torch.Tensor:
    # The network's fade of |tau|, written for tau >= 0 so that its derivative at
    # a segment's start is the one-sided one the motion has.
    return torch.exp(-tau / model.net.config.anchor_tau)


def _weight(tau: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
    """Weight (M,) of the previous segment's motion at segment times tau (M,): 1 at
    the start, 0 after ``blend`` (M,) seconds, with zero slope at both ends, so
    velocity is continuous too; 0 throughout where blend is 0."""
    on = blend > 0
    u = torch.clamp(tau / torch.where(on, blend, 1.0), 0, 1)
    return torch.where(on, 1.0 - u * u * (3.0 - 2.0 * u), 0.0)


def _fading(weight: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """Padded indices of the rows whose previous motion still shows, and their
    count; None when there are none. The others skip the old latent: its motion
    has weight 0, so leaving it out changes no pose."""
    index = torch.nonzero(weight > 0)[:, 0]  # (n,)
    return (pad_index(index), len(index)) if len(index) else None


def _pose_rows(
    model: MotionModel,
    rows: _Rows,
    tau: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None = None,
    fading: tuple[torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """Normalised poses (M, D) at segment times tau (M,) float64 of states
    y (M, 2L + 3), M a whole number of row blocks; ``weight`` and ``fading``
    as :func:`_weight` and :func:`_fading` give them, if already known."""
    L = model.net.config.latent_dim
    if weight is None:
        weight = _weight(tau, rows.blend)
        fading = _fading(weight)
    pose = model.decode_norm(y[:, :L]) + _fade(model, tau)[:, None] * rows.offset
    if fading is None:
        return pose
    index, n = fading
    old = (
        model.decode_norm(y[index, L : 2 * L])
        + _fade(model, tau[index] + rows.old_tau[index])[:, None]
        * rows.old_offset[index]
    )  # (n padded, D)
    new = pose[index]
    mixed = new + weight[index, None] * (old - new)
    return pose.index_copy(0, index[:n], mixed[:n])


def _field_rows(model: MotionModel, rows: _Rows):
    """The augmented vector field of a batch of rows, each in its segment's time:
    f(tau (M,), y (M, 2L + 3)) -> (M, 2L + 3)."""
    L = model.net.config.latent_dim

    def f(tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = _weight(tau, rows.blend)
        fading = _fading(weight)
        pose = model.denormalize(_pose_rows(model, rows, tau, y, weight, fading))
        heading = y[:, 2 * L + 2]
        c, s = torch.cos(heading), torch.sin(heading)
        vx, vz = pose[:, 1], pose[:, 2]
        # Heading frame to world: rotation by the heading about the up (Y) axis.
        root = torch.stack([c * vx + s * vz, -s * vx + c * vz, pose[:, 3]], -1)
        new = model.dynamics(y[:, :L])  # (M, L)
        old = torch.zeros_like(new)
        if fading is not None:
            index, n = fading
            old = old.index_copy(0, index[:n], model.dynamics(y[index, L : 2 * L])[:n])
        return torch.cat([new, old, root], -1)

    return f


def _extend(needs: Sequence[tuple[PoseStream, int]]) -> None:
    """Make each stream's segments up to the one holding its solver step; the
    streams that need a new segment at once get them together (one batched
    solve, decoding and encoding)."""
    while due := [
        (stream, nxt)
        for stream, step in needs
        if (nxt := stream._boundary_after(stream._starts[-1])) <= step
    ]:
        for (stream, start), seg in zip(due, _next_segments(due)):
            stream._segments.append(seg)
            stream._starts.append(start)


def _next_segments(due: Sequence[tuple[PoseStream, int]]) -> list[_Segment]:
    """The next segment of each stream, starting at its solver step, from the end
    of the one before: a re-encoding of its motion, or the source of a switch."""
    # TODO: re-encoding generated motion loses energy, so prior streams drift
    # toward slow, gesture-like motion and runs slow down within a minute; a
    # model trained on its own rollouts would keep pace.
    model = due[0][0].model
    L, dev = model.net.config.latent_dim, model.device
    prevs = [stream._segments[-1] for stream, _ in due]
    lengths = [start - prev.start for (_, start), prev in zip(due, prevs)]
    grids = _advance([(s, len(s._segments) - 1, n) for (s, _), n in zip(due, lengths)])

    # The last observation window of every stream that is not switching, decoded
    # in one batch and encoded in one batch per window length.
    encode = [i for i, (s, start) in enumerate(due) if start not in s._switches]
    latents: dict[int, torch.Tensor] = {}
    if encode:
        pairs, taus, states = [], [], []
        for i in encode:
            stream, steps = due[i][0], lengths[i]
            n = min(model.obs_frames, steps + 1)
            first = steps + 1 - n
            pairs += [(stream, prevs[i])] * n
            steps_t = torch.arange(first, steps + 1, dtype=torch.float64, device=dev)
            taus.append(steps_t / stream.rate)  # (n,)
            states.extend(grids[i][first : steps + 1])
        tau, y = torch.cat(taus), torch.stack(states)  # (N,), (N, 2L + 3)
        rows = _Rows.of(model, pairs)
        x = _pose_rows(model, rows, pad_rows(tau), pad_rows(y))[: len(pairs)]
        groups: dict[int, list] = {}
        first = 0
        for i, t in zip(encode, taus):
            groups.setdefault(len(t), []).append((i, x[first : first + len(t)], t))
            first += len(t)
        for group in groups.values():
            xs = torch.stack([w for _, w, _ in group])  # (B, n, D)
            ts = torch.stack([t - t[-1] for _, _, t in group])  # (B, n)
            gens = [
                due[i][0]._generator(prevs[i].seed, prevs[i].ordinal + 1)
                for i, _, _ in group
            ]
            temps = [due[i][0].temperature for i, _, _ in group]
            for (i, _, _), z in zip(group, model.posterior_many(xs, ts, gens, temps)):
                latents[i] = z

    out = []
    for i, ((stream, start), prev) in enumerate(zip(due, prevs)):
        end = grids[i][lengths[i]]
        if i in latents:
            z, offset = latents[i], torch.zeros_like(prev.offset)
            seed, ordinal = prev.seed, prev.ordinal + 1
        else:
            components, seed = stream._switches[start]
            z, offset, _ = stream._start(components)
            ordinal = 0
        state = torch.cat([z, end[:L], end[2 * L :]])
        old_tau = lengths[i] / stream.rate
        out.append(
            _Segment(state, offset, prev.offset, old_tau, True, start, seed, ordinal)
        )
    return out


@torch.no_grad()
def _advance(needs: Sequence[tuple[PoseStream, int, int]]) -> list[list[torch.Tensor]]:
    """Grid states of each (stream, segment index, segment-local solver step):
    the segment's states from its start to that step at least (fewer at the
    segment's end). Missing steps of every stream are solved together, one batched
    RK4 step at a time. Each stream keeps its latest two segments' grids."""
    grids, work = [], {}
    for stream, index, step in needs:
        seg = stream._segments[index]
        step = min(step, stream._boundary_after(seg.start) - seg.start)
        states = stream._grid.get(index)
        if states is None:
            states = stream._grid[index] = [seg.state]
            for old in list(stream._grid)[:-2]:  # oldest first: dicts keep order
                del stream._grid[old]
        grids.append(states)
        if id(states) not in work or work[id(states)][3] < step:
            work[id(states)] = (stream, seg, states, step)

    todo = list(work.values())
    while todo := [w for w in todo if len(w[2]) <= w[3]]:
        model, rate = todo[0][0].model, todo[0][0].rate
        rows = _Rows.of(model, [(stream, seg) for stream, seg, _, _ in todo])
        steps = torch.tensor(
            [len(states) - 1 for _, _, states, _ in todo],
            dtype=torch.float64,
            device=model.device,
        )  # (n,)
        y0 = pad_rows(torch.stack([states[-1] for _, _, states, _ in todo]))
        tau0, tau1 = pad_rows(steps / rate), pad_rows((steps + 1) / rate)
        y1 = rk4_step(_field_rows(model, rows), tau0, tau1, y0)[: len(todo)].clone()
        for (_, _, states, _), y in zip(todo, y1):
            states.append(y)
    return grids


@torch.no_grad()
def _rounds(requests: Sequence[tuple[PoseStream, np.ndarray]]):
    """Solve the states of several streams at their own times together.

    Yields rounds ``(positions, pairs, tau, y)``: per request, the indices into its
    times answered in this round; then, for those times in request order, their
    (stream, segment) pairs, segment-local times (n,) float64 and states
    (n, 2L + 3). A round takes each stream's next times within two segments.

    Raises:
        ValueError: a bad time, a stream given twice, or streams of two models.
    """
    streams = [stream for stream, _ in requests]
    if len({id(s) for s in streams}) != len(streams):
        raise ValueError("requests: each stream may be given once")
    if len({id(s.model) for s in streams}) > 1:
        raise ValueError("requests: streams of different models")
    times = [stream._check_times(t) for stream, t in requests]
    orders = [np.argsort(t, kind="stable") for t in times]
    cursors = [0] * len(requests)
    while True:
        active = [r for r in range(len(streams)) if cursors[r] < len(orders[r])]
        if not active:
            return
        # Each stream's next times within two segments, the first time's and the
        # one after; the segments they need are then made for all streams at once.
        chosen = {}
        for r in active:
            stream, order, t, c = streams[r], orders[r], times[r], cursors[r]
            first = stream._planned_start(math.floor(t[order[c]] * stream.rate + 1e-9))
            end = stream._boundary_after(stream._boundary_after(first))
            positions, steps = [], []
            while c < len(order) and len(positions) < MAX_ROUND:
                k = math.floor(t[order[c]] * stream.rate + 1e-9)  # grid point <= t
                if k >= end:
                    break
                positions.append(int(order[c]))
                steps.append(k)
                c += 1
            cursors[r] = c
            chosen[r] = positions, steps
        _extend([(streams[r], steps[-1]) for r, (_, steps) in chosen.items()])
        needs: dict[tuple[int, int], int] = {}  # (request, segment) -> last step
        for r, (_, steps) in chosen.items():
            starts = streams[r]._starts
            for k in steps:
                index = bisect.bisect_right(starts, k) - 1
                needs[r, index] = max(needs.get((r, index), 0), k - starts[index])
        grids = dict(
            zip(needs, _advance([(streams[r], i, k) for (r, i), k in needs.items()]))
        )

        # Grid states at or just before each time, then one shortened RK4 step to
        # the times between grid points.
        pairs, start, end, states = [], [], [], []
        for r, (positions, steps) in chosen.items():
            stream = streams[r]
            for i, k in zip(positions, steps):
                index = bisect.bisect_right(stream._starts, k) - 1
                seg = stream._segments[index]
                tau_k = (k - seg.start) / stream.rate
                tau = times[r][i] - seg.start / stream.rate
                pairs.append((stream, seg))
                start.append(tau_k)
                end.append(tau if tau - tau_k > 1e-12 else tau_k)
                states.append(grids[r, index][k - seg.start])
        model = streams[0].model
        y = torch.stack(states)  # (n, 2L + 3)
        tau_k = torch.tensor(start, dtype=torch.float64, device=model.device)
        tau = torch.tensor(end, dtype=torch.float64, device=model.device)
        off = torch.nonzero(tau != tau_k)[:, 0]
        if len(off):
            rows = _Rows.of(model, [pairs[i] for i in off.tolist()])
            index = pad_index(off)
            f = _field_rows(model, rows)
            y = y.index_copy(
                0, off, rk4_step(f, tau_k[index], tau[index], y[index])[: len(off)]
            )

        answered = [[] for _ in requests]
        for r, (positions, _) in chosen.items():
            streams[r].latest = max(streams[r].latest, float(times[r][positions[-1]]))
            answered[r] = positions
        yield answered, pairs, tau, y


@torch.no_grad()
def states_together(
    requests: Sequence[tuple[PoseStream, np.ndarray]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pose features (T, D) and root states (T, 3) of several streams of one model,
    each at its own times (T,) seconds, solved together: one batched model call per
    solver stage for all streams. Every stream's answer is bit for bit the one its
    own :meth:`PoseStream.states` gives (see :mod:`motionode.rowwise`).

    Raises:
        ValueError: a bad time, a stream given twice, or streams of two models.
    """
    out = []
    for stream, times in requests:
        count = len(np.asarray(times).reshape(-1))
        out.append((np.zeros((count, stream.model.spec.dim)), np.zeros((count, 3))))
    for answered, pairs, tau, y in _rounds(requests):
        model, n = pairs[0][0].model, len(pairs)
        L = model.net.config.latent_dim
        rows = _Rows.of(model, pairs)
        x = _pose_rows(model, rows, pad_rows(tau), pad_rows(y))[:n]
        poses = model.denormalize(x).cpu().numpy()  # (n, D)
        roots = y[:, 2 * L :].cpu().numpy()  # (n, 3)
        first = 0
        for (pose, root), positions in zip(out, answered):
            last = first + len(positions)
            pose[positions], root[positions] = poses[first:last], roots[first:last]
            first = last
    return out


def channels_together(
    requests: Sequence[tuple[PoseStream, np.ndarray]],
) -> list[np.ndarray]:
    """Principal channel rows (T, C) of several streams at their own times, as
    :meth:`PoseStream.channels_at` with ``continuous=False`` gives them, solved and
    decoded together."""
    states = states_together(requests)
    if not states:
        return []
    spec = requests[0][0].model.spec
    poses = np.concatenate([p for p, _ in states])  # (N, D)
    roots = np.concatenate([r for _, r in states])  # (N, 3)
    rows = (
        feat.decode(spec, poses, roots[:, :2], roots[:, 2], continuous=False)
        if len(poses)
        else np.zeros((0, requests[0][0].skeleton.num_channels))
    )
    splits = np.cumsum([len(p) for p, _ in states])[:-1]
    return np.split(rows, splits)
