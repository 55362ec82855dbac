"""Does generated motion stay alive, and stay like the training data, for minutes?

Run by hand: ``python benchmarks/bench_long_stream.py [--model PATH] [--minutes 10]``.
Streams from the prior and from a seed clip and prints:

1. mean joint speed (m/s, heading frame) of every 10 s window against the
   training data's per-second range, stored with the model;
2. for every 1 s window of each stream, the distance to the nearest 1 s window of
   the training clips, per minute, beside two references: held-out clips' windows
   to their nearest training window (real motion the model never saw), and each
   training window to its nearest window of a *different* training clip.

Distances are RMS joint-position differences in mm over a window's frames and
body joints (the moving root and below), heading frame (root above the origin,
facing a fixed way). Near 0 would
mean copying the data; far above the references, motion unlike any of it.
Needs the Bandai clips in ``../shared/data/bvh`` (else the bundled ones stand in).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from motionode import features as feat
from motionode.bvh import read_bvh
from motionode.evaluate import stream_motion
from motionode.generate import MotionModel, assets_dir
from motionode.torchpose import FeatureFK
from motionode.train import stride_clip

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bvh"
WINDOW = 30  # frames at the training rate: one second
TRAIN_STRIDE = 10  # frames between training window starts


def find(names: list[str]) -> list[Path]:
    """Paths of the named clips in the shared data, else in the bundled clips."""
    roots = [DATA, assets_dir() / "clips"]
    out = []
    for name in names:
        for root in roots:
            hits = sorted(root.rglob(name)) if root.is_dir() else []
            if hits:
                out.append(hits[0])
                break
    return out


def clip_windows(model: MotionModel, paths: list[Path], stride: int) -> list:
    """Per clip, its 1 s windows of heading-frame joint positions, flattened to
    (W, WINDOW * J * 3) metres."""
    fk = FeatureFK(model.spec).double()
    out = []
    for p in paths:
        clip = stride_clip(read_bvh(p), model.train_fps)
        x = torch.tensor(model.spec.normalize(feat.encode(model.spec, clip).pose))
        out.append(windows_of(body(model, fk(x).numpy()), stride))
    return out


def body(model: MotionModel, pos: np.ndarray) -> np.ndarray:
    """Positions (F, J', 3) of the joints at and below the moving root: those
    above it sit at the origin in the heading frame and would add zeros."""
    above = set(feat._ancestors(model.skeleton, model.spec.root))
    return pos[:, [j for j in range(pos.shape[1]) if j not in above]]


def windows_of(pos: np.ndarray, stride: int) -> np.ndarray:
    """(W, WINDOW * J * 3) windows of positions (F, J, 3) every ``stride`` frames."""
    starts = np.arange(0, len(pos) - WINDOW + 1, stride)
    flat = [pos[s : s + WINDOW].reshape(-1) for s in starts]
    return np.stack(flat) if flat else np.zeros((0, WINDOW * pos[0].size))


def nearest_mm(query: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """(Q,) RMS per-joint distance in mm from each query window to its nearest in
    ``bank``."""
    q, b = torch.tensor(query), torch.tensor(bank)
    d2 = (q * q).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * q @ b.T  # (Q, B)
    joints = query.shape[1] // 3
    return 1000 * np.sqrt(np.maximum(d2.min(1).values.numpy(), 0) / joints)


def spread(d: np.ndarray) -> str:
    p5, p50, p95 = np.percentile(d, [5, 50, 95])
    return f"median {p50:6.1f}  (5% {p5:6.1f}, 95% {p95:6.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sources",
        nargs="+",
        default=["prior", "clip:dataset-1_walk_normal_001"],
        help="streams to generate",
    )
    args = parser.parse_args()
    model = MotionModel.load(args.model)
    train = model.metadata["train_speed_m_per_s"]

    # 1. Reference windows: training clips, and held-out ones.
    start = time.perf_counter()
    train_paths = find(model.metadata.get("clips", []))
    held_paths = find(model.metadata.get("holdout", []))
    per_clip = clip_windows(model, train_paths, TRAIN_STRIDE)
    bank = np.concatenate(per_clip)
    owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(per_clip)])
    print(
        f"training windows: {len(bank)} from {len(train_paths)} clips; held-out "
        f"clips: {len(held_paths)} ({time.perf_counter() - start:.0f} s)"
    )
    cross = np.concatenate(
        [nearest_mm(w, bank[owner != i]) for i, w in enumerate(per_clip)]
    )
    print(f"training window -> nearest of another clip (mm): {spread(cross)}")
    if held_paths:
        held = np.concatenate(clip_windows(model, held_paths, WINDOW))
        print(
            f"held-out window -> nearest training (mm):      {spread(nearest_mm(held, bank))}"
        )

    # 2. Long streams, per 10 s and per minute.
    print(
        f"training speed per second (m/s): 1st percentile {train['p1']:.3f}, 5th "
        f"{train['p5']:.3f}, median {train['p50']:.3f}, 95th {train['p95']:.3f}, "
        f"max {train['p100']:.3f}"
    )
    for source in args.sources:
        start = time.perf_counter()
        motion = stream_motion(model, source, args.seed, args.minutes * 60)
        took = time.perf_counter() - start
        speeds = motion["speeds"]
        tens = speeds[: len(speeds) // 10 * 10].reshape(-1, 10).mean(1)
        inside = (tens >= train["p1"]) & (tens <= train["p100"])
        print(
            f"\n{source}, seed {args.seed}: {args.minutes:g} min generated in "
            f"{took:.0f} s; mean joint speed per 10 s (m/s), {inside.sum()} of "
            f"{len(tens)} inside the training range:"
        )
        for i in range(0, len(tens), 6):
            print(
                f"  min {i // 6:2d}: " + " ".join(f"{v:.3f}" for v in tens[i : i + 6])
            )
        gen = windows_of(body(model, motion["heading_pos"]), WINDOW)
        d = nearest_mm(gen, bank)
        print("  nearest training window (mm), per minute:")
        per_min = 60 * round(model.train_fps) // WINDOW
        for i in range(0, len(d), per_min):
            print(f"  min {i // per_min:2d}: {spread(d[i : i + per_min])}")


if __name__ == "__main__":
    main()
