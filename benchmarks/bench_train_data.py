"""Does data loading keep up with training on hours of mocap?

Run by hand: ``python benchmarks/bench_train_data.py [--hours 3] [--device auto]``.
Repeats the bundled clips until they add up to ``--hours`` of motion (real frames,
not resampled), then prints: reading and feature-encoding time, memory held by the
features, the time to draw one batch, and one optimiser step on the device, with
and without bfloat16 autocast on CUDA. Batches are drawn on the host while the
device works, so loading keeps up when one batch takes far less than one step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from motionode.bvh import Clip
from motionode.generate import assets_dir
from motionode.train import TrainConfig, Trainer, find_clips, load_training_clips


def step_seconds(trainer: Trainer, steps: int = 5) -> float:
    trainer.losses(trainer.batch(0), 0)["total"].backward()  # warm-up
    start = time.perf_counter()
    for step in range(1, steps + 1):
        trainer.optim.zero_grad()
        trainer.losses(trainer.batch(step), step)["total"].backward()
        trainer.optim.step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0, help="mocap to load")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    parser.add_argument("--batch", type=int, default=64, help="windows per step")
    args = parser.parse_args()

    start = time.perf_counter()
    paths = find_clips([str(assets_dir() / "clips")])
    bundled = load_training_clips(paths)
    read_s = time.perf_counter() - start
    seconds = sum(c.num_frames * c.frame_time for c in bundled)
    copies = max(1, round(args.hours * 3600 / seconds))
    clips = [
        Clip(c.skeleton, c.motion, c.frame_time, f"{c.source}#{k}")
        for k in range(copies)
        for c in bundled
    ]
    hours = copies * seconds / 3600
    print(
        f"{len(clips)} clips, {hours:.2f} h of motion "
        f"(bundled clips read in {read_s:.2f} s: {seconds:.0f} s of motion)"
    )

    config = TrainConfig(batch_size=args.batch, steps=10, checkpoint_every=10**9)
    start = time.perf_counter()
    trainer = Trainer(clips, config, device=args.device)
    prepare_s = time.perf_counter() - start
    held = sum(
        f.nbytes + t.nbytes for f, t in zip(trainer.data.feats, trainer.data.times)
    )
    print(
        f"features encoded in {prepare_s:.1f} s; {held / 2**20:.0f} MiB held "
        f"({trainer.spec.dim} features per frame at {config.train_fps:g} fps)"
    )

    draws = [time.perf_counter()]
    for step in range(20):
        trainer.batch(step)
        draws.append(time.perf_counter())
    batch_ms = float(np.median(np.diff(draws))) * 1000
    print(f"one batch of {args.batch} windows: {batch_ms:.2f} ms (median of 20)")

    step_s = step_seconds(trainer)
    label = "bfloat16 autocast" if trainer.amp_enabled else "float32"
    print(
        f"one step on {trainer.device} ({label}): {step_s * 1000:.0f} ms; batch "
        f"drawing is {batch_ms / (step_s * 1000):.1%} of it"
    )
    if trainer.amp_enabled:
        trainer.config.amp = False
        print(
            f"one step on {trainer.device} (float32): "
            f"{step_seconds(trainer) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
