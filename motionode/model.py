"""The latent-ODE VAE: encoder over timed frames, ODE dynamics, pose decoder.

This is the only module that imports torchdiffeq. ODE time is always float64 while
the state keeps the network's dtype, so long streams never lose time resolution.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torchdiffeq
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["LatentODEVAE", "ModelConfig", "odeint_grid", "rk4_step"]


@dataclass
class ModelConfig:
    """Architecture of the latent-ODE VAE; stored in every checkpoint."""

    feature_dim: int  # D, size of one pose-feature vector
    latent_dim: int = 48  # L, size of the ODE state
    hidden: int = 256  # width of the encoder GRU and the decoder MLP
    ode_hidden: int = 192  # width of the dynamics MLP
    solver_rate: float = 30.0  # fixed RK4 steps per second of motion
    anchor_tau: float = 0.3  # seconds over which a continuation's start offset fades

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"model config: unknown keys {sorted(unknown)}")
        return cls(**data)


class _Dynamics(nn.Module):
    """Autonomous latent vector field dz/dt = f(z); autonomy lets a stream run forever.

    f is a bank of 2-D oscillators (pairs of latent dims rotating at learnt angular
    frequencies, 0.3 to 4 Hz at the start: the range of gait and gesture cycles) plus
    a small MLP. A pure rotation keeps the latent's energy, so motion does not die out
    by default; the MLP learns damping, coupling and everything else.
    """

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.pairs = latent // 2
        hz = torch.exp(torch.linspace(math.log(0.3), math.log(4.0), self.pairs))
        self.log_omega = nn.Parameter(torch.log(2 * math.pi * hz))  # (pairs,)
        self.net = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, latent),
            nn.Tanh(),
        )
        with torch.no_grad():
            self.net[4].weight.mul_(0.1)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n = 2 * self.pairs
        a, b = z[..., 0:n:2], z[..., 1:n:2]  # (..., pairs) each
        w = torch.exp(self.log_omega).to(z.dtype)
        spin = torch.stack([-w * b, w * a], dim=-1).flatten(-2)  # (..., 2 * pairs)
        if n < z.shape[-1]:
            spin = torch.cat([spin, torch.zeros_like(z[..., n:])], dim=-1)
        return spin + self.scale * self.net(z)


def odeint_grid(
    func, y0: torch.Tensor, times: torch.Tensor, rate: float
) -> torch.Tensor:
    """Solve from ``times[0]`` through ``times`` (float64, strictly monotonic) with RK4.

    The solver grid is ``times[0] + k / rate`` merged with the output times, so every
    output is a solver state at exactly that time, never one interpolated between
    grid points (torchdiffeq's own step-size grid interpolates linearly).

    Returns:
        (len(times), *y0.shape) states.
    """
    return torchdiffeq.odeint(
        func,
        y0,
        times,
        method="rk4",
        options={"grid_constructor": _grid(1.0 / rate), "perturb": False},
    )


def rk4_step(
    func, tau0: torch.Tensor, tau1: torch.Tensor, y0: torch.Tensor
) -> torch.Tensor:
    """One RK4 step per row, each row over its own span: the step
    :func:`odeint_grid` takes (torchdiffeq's ``rk4``, the 3/8 rule), for a batch
    of states that sit at different times, as streams advanced together do.

    Args:
        func: f(tau (B,) float64, y (B, S)) -> (B, S).
        tau0, tau1: (B,) float64 start and end of each row's step.
        y0: (B, S) states at ``tau0``.

    Returns:
        (B, S) states at ``tau1``.
    """
    dt = tau1 - tau0  # (B,)
    h = dt[:, None].to(y0.dtype)  # (B, 1)
    k1 = func(tau0, y0)
    k2 = func(tau0 + dt / 3, y0 + h * k1 / 3)
    k3 = func(tau0 + dt * (2 / 3), y0 + h * (k2 - k1 / 3))
    k4 = func(tau1, y0 + h * (k1 - k2 + k3))
    return y0 + (k1 + 3 * (k2 + k3) + k4) * h * 0.125


def _grid(step: float):
    """torchdiffeq grid constructor: regular steps merged with the output times."""

    def construct(func, y0, t: torch.Tensor) -> torch.Tensor:
        span = float(t[-1] - t[0])
        count = math.floor(abs(span) / step + 1e-9)
        k = torch.arange(1, count + 1, dtype=t.dtype, device=t.device)
        regular = t[0] + math.copysign(step, span) * k  # (count,)
        # A regular point within a hair of an output time would make a useless step.
        near = (regular[:, None] - t[None]).abs().min(dim=1).values < 1e-9
        grid = torch.cat([t, regular[~near]]).sort(descending=span < 0).values
        return grid

    return construct


class LatentODEVAE(nn.Module):
    """Encoder q(z0 | timed frames), latent ODE, and decoder z -> pose features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim, lat, hid = config.feature_dim, config.latent_dim, config.hidden
        self.encoder_in = nn.Linear(dim + 2, hid)
        self.encoder = nn.GRUCell(hid, hid)
        self.encoder_out = nn.Linear(hid, 2 * lat)
        self.dynamics = _Dynamics(lat, config.ode_hidden)
        self.decoder = nn.Sequential(
            nn.Linear(lat, hid),
            nn.SiLU(),
            nn.Linear(hid, hid),
            nn.SiLU(),
            nn.Linear(hid, dim),
        )

    def encode(
        self, obs: torch.Tensor, mask: torch.Tensor, times: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of the latent state at the last observed frame.

        Args:
            obs: (B, T, D) normalised features, oldest first.
            mask: (B, T) bool, which frames were observed; the last must be.
            times: (B, T) float64 seconds relative to the last frame (all <= 0).

        Returns:
            mean and log-variance, each (B, L).
        """
        B, T, _ = obs.shape
        hid = self.config.hidden
        h = obs.new_zeros(B, hid)
        last_seen = torch.full((B,), float("nan"), dtype=times.dtype, device=obs.device)
        for i in range(T):
            # Gap since the previous observed frame, and distance to the anchor.
            gap = torch.nan_to_num(times[:, i] - last_seen, nan=1.0)
            time_in = torch.stack([torch.log1p(gap * 10.0), times[:, i]], dim=1)
            x = torch.cat([obs[:, i], time_in.to(obs.dtype)], dim=1)  # (B, D + 2)
            h_new = self.encoder(torch.tanh(self.encoder_in(x)), h)
            seen = mask[:, i, None]
            h = torch.where(seen, h_new, h)
            last_seen = torch.where(mask[:, i], times[:, i], last_seen)
        stats = self.encoder_out(h)  # (B, 2L)
        mean, logvar = stats.chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 6.0)

    def solve(self, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Latent states at per-sample times.

        Args:
            z0: (B, L) states at time 0.
            times: (B, T) float64 seconds, each row sorted away from 0 (all >= 0 or
                all <= 0); rows may differ: the solve runs over their sorted union.

        Returns:
            (B, T, L) states.
        """
        B, T = times.shape
        sign = -1.0 if bool((times <= 0).all()) else 1.0
        # Times equal but for float noise (t[i] - t[a] from different anchors) are
        # merged at 1 ns: each distinct time becomes a solver grid point.
        ns, inverse = torch.unique(
            torch.round(times.abs().reshape(-1) * 1e9), return_inverse=True
        )
        union = ns / 1e9
        if union[0] != 0:
            union = torch.cat([union.new_zeros(1), union])
            inverse = inverse + 1
        grid = sign * union  # (U,) float64 from 0 outwards
        if len(grid) == 1:
            return z0[:, None].expand(B, T, -1)
        path = odeint_grid(self.dynamics, z0, grid, self.config.solver_rate)  # (U,B,L)
        inverse = inverse.reshape(B, T)
        batch = torch.arange(B, device=z0.device)[:, None]
        return path[inverse, batch]  # (B, T, L)

    def forward(
        self,
        obs: torch.Tensor,
        mask: torch.Tensor,
        obs_times: torch.Tensor,
        pred_times: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Reconstruct observed frames and continue past the last one.

        Args:
            obs, mask, obs_times: as for :meth:`encode`.
            pred_times: (B, P) float64 seconds after the last observed frame (> 0).
            generator: source of the posterior sample's noise.

        Returns:
            dict with ``recon`` (B, T, D), ``pred`` (B, P, D), ``mean``, ``logvar``.
        """
        mean, logvar = self.encode(obs, mask, obs_times)
        noise = torch.randn(
            mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
        )
        z0 = mean + noise * torch.exp(0.5 * logvar)  # (B, L)

        recon = self.decoder(self.solve(z0, obs_times))  # (B, T, D)
        z_pred = self.solve(z0, pred_times)  # (B, P, L)
        anchor = obs[:, -1] - self.decoder(z0)  # (B, D)
        fade = self.fade(pred_times).to(anchor.dtype)[..., None]  # (B, P, 1)
        pred = self.decoder(z_pred) + fade * anchor[:, None]
        return {"recon": recon, "pred": pred, "mean": mean, "logvar": logvar}

    def fade(self, dt: torch.Tensor) -> torch.Tensor:
        """Weight of the start offset ``dt`` seconds into a continuation (1 at 0).

        Starting a continuation exactly at the last observed pose matters: a model
        whose first predicted frame jumps loses to simply holding that pose.
        """
        return torch.exp(-dt.abs() / self.config.anchor_tau)


def kl_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) per sample, summed over latent dims: (B,)."""
    return 0.5 * torch.sum(mean**2 + logvar.exp() - 1.0 - logvar, dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
