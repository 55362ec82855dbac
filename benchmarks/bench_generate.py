"""Generation and training throughput of the default model, on CPU and CUDA if present.

Run by hand: ``python benchmarks/bench_generate.py [--model PATH] [--minutes 10]``.
Prints poses per second for live-style (one frame per call) and clip-style
(many frames per call) generation, the real-time factor at 60 and 144 fps, the
time of one training step, and per-10 s mean joint speed of a long stream next to
the range seen in the bundled clips.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from motionode.evaluate import clip_speeds, stream_speeds
from motionode.generate import MotionModel


def live_rate(model: MotionModel, fps: float, seconds: float) -> float:
    """Stream seconds generated per wall-clock second, one frame per call."""
    stream = model.open("prior", seed=0)
    times = np.arange(round(seconds * fps)) / fps
    start = time.perf_counter()
    for t in times:
        stream.channels_at(np.array([t]), continuous=False)
    return seconds / (time.perf_counter() - start)


def clip_rate(model: MotionModel, fps: float, seconds: float) -> float:
    stream = model.open("prior", seed=0)
    start = time.perf_counter()
    stream.clip(seconds, fps)
    return seconds / (time.perf_counter() - start)


def train_step_seconds(device: str, steps: int = 5) -> float:
    from motionode.generate import assets_dir
    from motionode.train import TrainConfig, Trainer, find_clips, load_training_clips

    clips = load_training_clips(find_clips([str(assets_dir() / "clips")]))
    trainer = Trainer(
        clips, TrainConfig(steps=steps + 1, checkpoint_every=10**9), device=device
    )
    trainer.losses(trainer.batch(0), 0)["total"].backward()  # warm-up
    start = time.perf_counter()
    for step in range(1, steps + 1):
        trainer.optim.zero_grad()
        trainer.losses(trainer.batch(step), step)["total"].backward()
        trainer.optim.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="length of the long stream whose speed is reported",
    )
    args = parser.parse_args()

    model = MotionModel.load(args.model)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cuda {torch.cuda.is_available()}"
    )
    for fps in (60.0, 144.0):
        print(
            f"live  {fps:5g} fps: {live_rate(model, fps, 5.0):6.2f}x real time "
            "(one stream, one frame per call)"
        )
    print(f"clip  {120:5g} fps: {clip_rate(model, 120.0, 10.0):6.2f}x real time")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        print(f"train step (batch 64) on {dev}: {train_step_seconds(dev):.3f} s")

    data = clip_speeds(model, list(model.seeds.values()))
    speeds = stream_speeds(model, "prior", 0, args.minutes * 60)
    tens = speeds[: len(speeds) // 10 * 10].reshape(-1, 10).mean(1)
    print(
        f"bundled clips, mean joint speed per second: {data.min():.3f} .. "
        f"{data.max():.3f} m/s"
    )
    print(
        f"{args.minutes:g} min prior stream, per 10 s: {tens.min():.3f} .. "
        f"{tens.max():.3f} m/s"
    )


if __name__ == "__main__":
    main()
