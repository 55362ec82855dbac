"""Read speed of motionode's BVH reader on the largest shared clips, in MB/s.

motionode is timed as installed (with its compiled row parser when that was built)
and with the numpy reader it falls back to without one. Other readers are timed too when they are installed (none is a dependency):

- ``bvhio`` (``bvhio.readAsBvh``): also turns every key into a quaternion.
- ``bvh`` (PyPI, ``bvh.Bvh``): keeps values as strings, so the time includes turning
  its frames into a float array, the form motionode returns.

Usage: python benchmarks/bench_bvh_read.py [--clips N] [--repeat R] [FILE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from motionode import bvh
from motionode.bvh import read_bvh

CLIPS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bvh"


def read_motionode(path: Path) -> np.ndarray:
    return read_bvh(path).motion


def read_motionode_numpy(path: Path) -> np.ndarray:
    with numpy_reader():
        return read_bvh(path).motion


@contextlib.contextmanager
def numpy_reader():
    """Read as motionode does when its compiled parser was not built."""
    saved = bvh._bvhmotion, bvh._bvhmotion_missing
    bvh._bvhmotion, bvh._bvhmotion_missing = None, None
    try:
        yield
    finally:
        bvh._bvhmotion, bvh._bvhmotion_missing = saved


def read_bvhio(path: Path) -> int:
    import bvhio

    return bvhio.readAsBvh(str(path)).FrameCount


def read_pypi_bvh(path: Path) -> np.ndarray:
    from bvh import Bvh

    with open(path, encoding="utf-8") as f:
        mocap = Bvh(f.read())
    return np.array(mocap.frames, dtype=np.float64)


def available() -> dict[str, Callable[[Path], object]]:
    readers: dict[str, Callable[[Path], object]] = {"motionode": read_motionode}
    if bvh._bvhmotion is None:
        print("motionode: compiled parser not built, timing the numpy reader")
    else:
        readers["motionode/numpy"] = read_motionode_numpy
    try:
        import bvhio  # noqa: F401

        readers["bvhio"] = read_bvhio
    except ImportError:
        print("bvhio not installed: skipped (pip install bvhio)")
    try:
        from bvh import Bvh  # noqa: F401

        readers["bvh (PyPI)"] = read_pypi_bvh
    except ImportError:
        print("bvh not installed: skipped (pip install bvh)")
    return readers


def best_time(read: Callable[[Path], object], path: Path, repeat: int) -> float:
    """Fastest of ``repeat`` reads, after one untimed read to warm the file cache."""
    read(path)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        read(path)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="BVH files (default: the largest shared clips)",
    )
    parser.add_argument("--clips", type=int, default=5, help="how many largest clips")
    parser.add_argument("--repeat", type=int, default=3, help="timed reads per file")
    args = parser.parse_args()

    files = args.files
    if not files:
        if not CLIPS_DIR.is_dir():
            raise SystemExit(
                f"no clips: {CLIPS_DIR} not found (clone with shared/ "
                "beside the repo, or name files)"
            )
        files = sorted(CLIPS_DIR.rglob("*.bvh"), key=lambda p: p.stat().st_size)
        files = files[::-1][: args.clips]
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"{len(files)} files, {total_mb:.1f} MB, best of {args.repeat} reads each")

    # Independent parsers must agree with ours on every value they return as floats.
    if "bvh (PyPI)" in (readers := available()):
        for path in files:
            ours, theirs = read_motionode(path), read_pypi_bvh(path)
            if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                print(f"values differ from bvh (PyPI): {path}")

    speed = {}
    for name, read in readers.items():
        seconds = sum(best_time(read, p, args.repeat) for p in files)
        speed[name] = total_mb / seconds
        print(f"{name:16s} {seconds:8.3f} s  {speed[name]:8.1f} MB/s")
    for name, mb_per_s in speed.items():
        if name != "motionode":
            print(f"motionode / {name}: {speed['motionode'] / mb_per_s:.1f}x")


if __name__ == "__main__":
    main()
