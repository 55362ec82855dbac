"""``motionode eval``: held-out figures of a model, printed as tables, optionally
written as JSON and drawn as PNG plots."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_SEED_SOURCE = "clip:dataset-1_walk_normal_001"


def run(args: argparse.Namespace, model) -> int:
    """Measure ``model`` as ``args`` asks, print the tables; returns 0.

    Raises:
        ValueError: bad arguments, clips of another rig, or --plots without
            matplotlib.
    """
    from tqdm import tqdm

    from motionode.bvh import read_bvh
    from motionode.train import find_clips

    paths = find_clips(args.clips) if args.clips else holdout_paths(model)
    if not paths:
        raise SystemExit(
            "eval: no clips given and the model names no held-out "
            "clips that can be found"
        )
    if not (math.isfinite(args.seconds) and args.seconds >= 1):
        raise ValueError(f"--seconds: expected at least 1 second, got {args.seconds}")
    if args.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError(
                "--plots: drawing needs matplotlib: pip install 'motionode[preview]'"
            ) from None
    sources = _sources(model, args.sources)

    clips = [read_bvh(p) for p in tqdm(paths, desc="reading clips", disable=None)]
    stages = ["reconstruction", "prediction", "upsampling", "data speed"]
    stages += [f"stream {s}" for s in sources] + ["plausibility"]
    bar = tqdm(total=len(stages), unit="stage", dynamic_ncols=True, disable=None)
    try:
        result = _measure(model, clips, sources, args, bar)
    finally:
        bar.close()
    result = {"clips": [str(p) for p in paths], **result}
    print_report(result, model)
    if args.json:
        _write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.plots:
        from motionode.eval_plots import write_plots

        train = model.metadata.get("train_speed_m_per_s")
        for path in write_plots(result, args.plots, train):
            print(f"wrote {path}")
    return 0


def _sources(model, asked: list[str] | None) -> list[str]:
    """Generated-stream sources: as asked, else the prior and a walk seed clip
    (or the first seed clip) when the model has one."""
    known = model.sources()
    if asked:
        for s in asked:
            if s not in known:
                raise ValueError(f"--sources: unknown {s!r}; known: {known}")
        return list(asked)
    clips = [s for s in known if s.startswith("clip:")]
    if DEFAULT_SEED_SOURCE in clips:
        return ["prior", DEFAULT_SEED_SOURCE]
    return ["prior"] + clips[:1]


def _measure(model, clips: list, sources: list[str], args, bar) -> dict:
    """Every figure of the report, advancing ``bar`` once per stage."""
    from motionode import evaluate as ev

    def stage(name: str, fn, *a):
        bar.set_description(name)
        value = fn(*a)
        bar.update(1)
        return value

    rec = stage("reconstruction", ev.reconstruction_error, model, clips)
    pred = stage("prediction", ev.prediction_error, model, clips)
    up = stage("upsampling", ev.upsampling_error, model, clips, (10.0, 30.0), args.seed)
    data_speed = stage("data speed", ev.clip_speeds, model, clips)
    streams = {
        s: stage(f"stream {s}", ev.stream_motion, model, s, args.seed, args.seconds)
        for s in sources
    }
    plaus = stage(
        "plausibility",
        ev.plausibility,
        model,
        clips,
        {f"generated {s}": m["world_pos"] for s, m in streams.items()},
    )
    by_source = {
        s: [round(float(v), 4) for v in m["speeds"]] for s, m in streams.items()
    }
    speed = {
        "held_out_data": _summary(data_speed),
        **{f"generated_{s}": _summary(m["speeds"]) for s, m in streams.items()},
        "generated_per_second_by_source": by_source,
        "training_data": model.metadata.get("train_speed_m_per_s"),
    }
    if "prior" in by_source:
        speed["generated_per_second"] = by_source["prior"]
    return {
        "units": {
            "errors": "mm, mean per-joint position error, heading frame",
            "foot_slide": "mm/s, horizontal speed of planted foot joints",
            "bone_error": "mm, |joint-to-parent distance - rig bone length|",
            "jerk": "m/s^3, mean norm of the 3rd derivative of joint positions",
            "speed": "m/s, mean joint speed per second, heading frame",
        },
        "seed": args.seed,
        "stream_seconds": args.seconds,
        "reconstruction": rec,
        "prediction": pred,
        "upsampling": up,
        "plausibility": plaus,
        "speed_m_per_s": speed,
    }


def _summary(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def _write_json(path: str | os.PathLike, result: dict) -> None:
    """JSON with NaN written as null (JSON has no NaN), atomically."""
    from motionode.preview import write_atomic

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    write_atomic(path, json.dumps(clean(result), indent=2).encode())


def holdout_paths(model) -> list[Path]:
    """The model's held-out clips, looked up in the bundled clips and shared data."""
    from motionode.generate import assets_dir

    names = model.metadata.get("holdout", [])
    roots = [
        assets_dir() / "clips",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "bvh",
    ]
    found = []
    for name in names:
        for root in roots:
            hits = sorted(root.rglob(name)) if root.is_dir() else []
            if hits:
                found.append(hits[0])
                break
    return found


# ---------------------------------------------------------------------------- report


def _table(
    header: list, rows: list[list], width: int = 10, fmt: str | list[str] = ".1f"
) -> list[str]:
    """Lines of a table: the first column left-aligned to its widest entry, the
    others right-aligned in ``width`` characters, numbers in ``fmt`` (one format,
    or one per column after the first); NaN shows as "-"."""
    first = max(len(str(r[0])) for r in [header, *rows])
    fmts = [fmt] * (len(header) - 1) if isinstance(fmt, str) else fmt

    def cell(v, f: str) -> str:
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else format(v, f)
        return str(v)

    return [
        "  "
        + str(r[0]).ljust(first)
        + "".join(cell(v, f).rjust(width) for v, f in zip(r[1:], fmts))
        for r in [header, *rows]
    ]


def print_report(result: dict, model) -> None:
    """Print every figure of an evaluation result as aligned tables."""
    rec, pred, up = result["reconstruction"], result["prediction"], result["upsampling"]
    print(f"held-out clips: {len(result['clips'])}, frames: {rec['frames']}")
    print("errors are mean per-joint position errors (MPJPE) in mm, heading frame")
    print("\nreconstruction of 1 s windows from their own frames:")
    print(
        "\n".join(
            _table(
                ["", "mm"],
                [["model", rec["model_mm"]], ["mean pose", rec["mean_pose_mm"]]],
            )
        )
    )

    print(f"\nprediction after the last observed frame ({pred['windows']} windows):")
    rows = [
        [name, *pred[key]]
        for name, key in (
            ("model", "model_mm"),
            ("zero velocity", "zero_velocity_mm"),
            ("const velocity", "constant_velocity_mm"),
        )
    ]
    print("\n".join(_table(["horizon (ms)", *pred["horizons_ms"]], rows, 8)))

    fps = ", ".join(f"{f:g}" for f in up["clip_fps"])
    print(
        f"\nupsampling: observe some frames of each 1 s window, fill in every frame "
        f"at the clip's {fps} fps"
    )
    print(
        "  slerp: every joint rotation slerped, root height linear, then FK; "
        "spline: natural cubic spline on joint positions"
    )
    rows = []
    for c in up["conditions"]:
        row = [c["name"]] + [c[f"{m}_mm"] for m in ("model", "slerp", "spline")]
        row += [c[f"{m}_between_mm"] for m in ("model", "slerp", "spline")]
        row += [c["model_mm"] - min(c["slerp_mm"], c["spline_mm"])]
        rows.append(row)
    header = ["observed", "model", "slerp", "spline", "model*", "slerp*", "spline*"]
    print("\n".join(_table(header + ["model-best"], rows, 11)))
    print(
        "  * unobserved frames only; model-best: mm the model trails the best baseline"
    )
    for c in up["conditions"]:
        if c["pure_reconstruction"]:
            print(
                f"  {c['name']} is every frame of the clip: a pure reconstruction, "
                f"where the baselines are exact by construction"
            )
    spline_bone = ", ".join(
        f"{c['name']} {c['spline_bone_error_mm']['mean_mm']:.2f} "
        f"(max {c['spline_bone_error_mm']['max_mm']:.1f})"
        for c in up["conditions"]
    )
    print(f"  spline bone-length error, mm: {spline_bone}")

    pl = result["plausibility"]
    con = pl["contact"]
    print(
        f"\nplausibility, world positions at {pl['fps']:g} fps (root motion included):"
    )
    print(
        f"  a foot joint ({', '.join(con['feet'])}) is planted when within "
        f"{100 * con['height_margin_m']:g} cm of its resting height and slower "
        f"than {con['speed_m_s']:g} m/s"
    )
    rows = [
        [
            name,
            s["foot_slide_mm_s"],
            100 * s["contact_fraction"],
            s["bone_error_mean_mm"],
            s["bone_error_max_mm"],
            s["jerk_m_s3"],
        ]
        for name, s in pl["sequences"].items()
    ]
    header = ["", "slide mm/s", "planted %", "bone mm", "bone max", "jerk m/s3"]
    # Bone errors of forward kinematics are rounding, too small for one decimal.
    print("\n".join(_table(header, rows, 12, [".1f", ".1f", ".2g", ".2g", ".1f"])))

    sp = result["speed_m_per_s"]
    print("\nmean joint speed per second (m/s, heading frame):")
    rows = []
    for name, s in sp.items():
        if isinstance(s, dict) and "median" in s:
            rows.append([name, s["min"], s["median"], s["max"]])
    print("\n".join(_table(["", "min", "median", "max"], rows, 10, ".3f")))
    train = sp.get("training_data")
    if train:
        print(
            f"  training data: 1st percentile {train['p1']:.3f}, median "
            f"{train['p50']:.3f}, fastest second {train['p100']:.3f}"
        )
    for name, speeds in sp["generated_per_second_by_source"].items():
        print(f"generated {name}, each of {len(speeds)} seconds (m/s):")
        for i in range(0, len(speeds), 10):
            print("  " + " ".join(f"{v:.2f}" for v in speeds[i : i + 10]))
