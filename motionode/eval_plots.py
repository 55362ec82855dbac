"""Plots of ``motionode eval`` figures, drawn headless (matplotlib's Agg canvas).

Each function takes the dict the evaluation wrote to JSON and writes one PNG of
``SIZE_PX`` pixels: prediction error against horizon with its baselines,
upsampling error per method and observation condition, and generated streams'
speed per second against the training data's range.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from motionode.pictures import _figure, _save_png

logger = logging.getLogger(__name__)

__all__ = [
    "SIZE_PX",
    "plot_prediction",
    "plot_speeds",
    "plot_upsampling",
    "write_plots",
]

SIZE_PX = (900, 540)  # width, height of every plot


def plot_prediction(prediction: dict, path: str | os.PathLike) -> None:
    """MPJPE (mm) against horizon (ms): the model, zero and constant velocity."""
    fig = _figure(SIZE_PX)
    ax = fig.add_subplot(1, 1, 1)
    h = prediction["horizons_ms"]
    for key, label, style in (
        ("model_mm", "model", "o-"),
        ("zero_velocity_mm", "hold the last pose", "s--"),
        ("constant_velocity_mm", "constant joint velocity", "^:"),
    ):
        ax.plot(h, prediction[key], style, label=label)
    ax.set_xlabel("horizon after the last observed frame (ms)")
    ax.set_ylabel("MPJPE (mm, heading frame)")
    ax.set_title(f"prediction error ({prediction['windows']} held-out windows)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_png(fig, path)


def plot_upsampling(upsampling: dict, path: str | os.PathLike) -> None:
    """Grouped bars: MPJPE (mm) of each method under each observation condition."""
    from motionode.evaluate import UPSAMPLING_METHODS

    fig = _figure(SIZE_PX)
    ax = fig.add_subplot(1, 1, 1)
    conds = upsampling["conditions"]
    x = np.arange(len(conds))
    width = 0.8 / len(UPSAMPLING_METHODS)
    labels = {"model": "model", "slerp": "slerp + FK", "spline": "cubic spline (pos.)"}
    for k, m in enumerate(UPSAMPLING_METHODS):
        values = [c[f"{m}_mm"] for c in conds]
        bars = ax.bar(x + (k - 1) * width, values, width, label=labels[m])
        for rect, c in zip(bars, conds):
            ax.annotate(
                f"{c[f'{m}_mm']:.1f}",
                (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    # Head room above the tallest bar keeps the legend off the bars.
    ax.set_ylim(0, 1.3 * max(c[f"{m}_mm"] for c in conds for m in UPSAMPLING_METHODS))
    ax.set_xticks(x)
    ax.set_xticklabels(
        [
            c["name"] + (" (every frame seen)" if c["pure_reconstruction"] else "")
            for c in conds
        ]
    )
    fps = ", ".join(f"{f:g}" for f in upsampling["clip_fps"])
    ax.set_xlabel(f"observed frames; error at every frame of the clip ({fps} fps)")
    ax.set_ylabel("MPJPE (mm, heading frame)")
    ax.set_title("filling in the full frame rate")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    _save_png(fig, path)


def plot_speeds(
    per_second: dict[str, list[float]], train: dict | None, path: str | os.PathLike
) -> None:
    """Mean joint speed (m/s) of each second of each generated stream, against the
    training data's per-second percentiles (``train``: "p1", "p5", "p50", ...)."""
    fig = _figure(SIZE_PX)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.axhspan(train["p1"], train["p100"], color="0.9", label="training: p1 to max")
        ax.axhspan(train["p5"], train["p95"], color="0.8", label="training: p5 to p95")
        ax.axhline(train["p50"], color="0.5", lw=1, label="training median")
    for name, speeds in per_second.items():
        ax.plot(np.arange(len(speeds)) + 0.5, speeds, lw=1.5, label=name)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("mean joint speed per second (m/s, heading frame)")
    ax.set_title("generated streams against the training data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)


def write_plots(result: dict, out_dir: str | os.PathLike, train: dict | None) -> list:
    """Write ``prediction.png``, ``upsampling.png`` and ``stream_speed.png`` of an
    evaluation ``result`` into ``out_dir`` (made if missing); returns their paths.

    Raises:
        ImportError: matplotlib is missing (the ``preview`` extra).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "prediction.png", out / "upsampling.png", out / "stream_speed.png"]
    plot_prediction(result["prediction"], paths[0])
    plot_upsampling(result["upsampling"], paths[1])
    plot_speeds(
        result["speed_m_per_s"]["generated_per_second_by_source"], train, paths[2]
    )
    return paths
