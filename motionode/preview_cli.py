"""The ``motionode preview`` command: a motion at a robot's control rate, exported
(CSV, NPZ), checked against limits (report.json and a table), meshed (GLB) and
drawn (PNG)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from motionode.seeds import MAX_SEED, seed_argument

log = logging.getLogger(__name__)

__all__ = ["add_parser", "run"]

MODEL_RATE = 100.0  # default control rate for a model source, samples per second
MODEL_DURATION = 5.0  # default length of a model sample, seconds
TIGHTEST = 5  # rows per limit kind printed besides the violated ones


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``preview`` on the ``motionode`` command's subparsers."""
    p = subparsers.add_parser(
        "preview",
        help="export, check and draw a motion for a robot",
        description="Sample a BVH clip or a generated motion at a control rate, "
        "write it as CSV and NPZ, check joint limits, self-collision, floor "
        "penetration and foot sliding (report.json and a table), and write "
        "GLB bodies and PNG pictures.",
    )
    p.add_argument(
        "source", help="a BVH file, or a model source: 'prior' or 'clip:<name>'"
    )
    p.add_argument("--out", required=True, help="folder for the files")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="control rate, samples per second (default: the clip's "
        f"frame rate; {MODEL_RATE:g} for a model)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds (default: the whole clip; {MODEL_DURATION:g} for a model)",
    )
    p.add_argument(
        "--model", default=None, help="model checkpoint (default: the bundled model)"
    )
    p.add_argument(
        "--seed-clip",
        nargs="*",
        default=[],
        help="BVH clips usable as model sources 'clip:<file stem>'",
    )
    p.add_argument(
        "--seed",
        type=seed_argument,
        default=0,
        help=f"model random seed (0 to {MAX_SEED})",
    )
    p.add_argument(
        "--dt",
        type=float,
        default=1e-4,
        help="half-width in seconds of the model's central differences",
    )
    p.add_argument(
        "--units",
        type=float,
        default=0.01,
        help="metres per rig unit of a BVH clip (a model knows its own)",
    )
    p.add_argument(
        "--limits",
        default="auto",
        help="limits JSON file; 'auto' (default): the bundled "
        "bandai_human.json when the rig has its joints; 'none'",
    )
    p.add_argument(
        "--floor",
        default="zero",
        help="'zero' (y = 0), 'feet' (lowest foot over the first 0.5 s) "
        "or a height in metres",
    )
    p.add_argument(
        "--glb-times",
        type=float,
        nargs="*",
        default=None,
        help="times (s) of the poses written as GLB, each within the motion; "
        "each takes the nearest sample (default: first, middle and last sample)",
    )
    p.add_argument("--no-pictures", action="store_true", help="skip the PNG files")
    p.add_argument(
        "--all",
        action="store_true",
        help="print every limited joint, not only the tightest",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when any check is violated",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status (2: bad input, 1: --strict and a
    violation, 0 otherwise)."""
    from motionode import preview as pv

    try:
        import trimesh  # noqa: F401
    except ImportError:
        print(
            "error: preview needs trimesh: pip install 'motionode[preview]'",
            file=sys.stderr,
        )
        return 2
    pictures = not args.no_pictures
    if pictures:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "note: matplotlib is not installed, so no PNG pictures "
                "(pip install 'motionode[preview]')"
            )
            pictures = False

    traj = _sample(args)
    if args.glb_times is not None:
        # Named as the option; write_preview checks the same under its own name.
        pv.pose_samples(traj, args.glb_times, "--glb-times")
    limits = _limits(args.limits, traj.skeleton)
    floor: str | float = args.floor
    if floor not in ("zero", "feet"):
        try:
            floor = float(floor)
        except ValueError:
            raise ValueError(
                f"--floor: expected 'zero', 'feet' or a height in "
                f"metres, got {args.floor!r}"
            ) from None
    report, written = pv.write_preview(
        traj, args.out, limits, floor, args.glb_times, pictures
    )
    lines = format_report(report, every=args.all)
    lines.insert(
        3,
        f"  lengths: {traj.units_to_m:g} m per rig unit (--units; the "
        "bundled rig is in centimetres)",
    )
    for line in lines:
        print(line)
    print(
        f"wrote {len(written)} files to {args.out}: "
        f"{', '.join(p.name for p in written)}"
    )
    return 1 if args.strict and not report["summary"]["feasible"] else 0


def _sample(args: argparse.Namespace):
    from motionode import preview as pv

    src = args.source
    if src == "prior" or src.startswith("clip:"):
        from motionode.generate import MotionModel

        model = MotionModel.load(args.model, seeds=args.seed_clip or None)
        stream = model.open(src, seed=args.seed)
        rate = MODEL_RATE if args.rate is None else args.rate
        duration = MODEL_DURATION if args.duration is None else args.duration
        return pv.sample_stream(stream, rate, duration, args.dt)
    path = Path(src)
    if not path.is_file():
        raise ValueError(
            f"source: {src!r} is neither a BVH file nor a model source "
            f"('prior' or 'clip:<name>')"
        )
    from motionode.bvh import read_bvh

    if not (math.isfinite(args.units) and args.units > 0):
        raise ValueError(
            f"--units: expected a positive number of metres, got {args.units!r}"
        )
    return pv.sample_clip(read_bvh(path), args.rate, args.duration, args.units)


def _limits(choice: str, skeleton):
    from motionode.feasibility import Limits, load_limits
    from motionode.generate import assets_dir

    if choice == "none":
        return Limits()
    if choice != "auto":
        limits = load_limits(choice)
        limits.check_rig(skeleton)
        return limits
    bundled = assets_dir() / "limits" / "bandai_human.json"
    limits = load_limits(bundled)
    try:
        limits.check_rig(skeleton)
    except ValueError:
        print(
            f"note: the rig does not match {bundled.name}; joints are unlimited "
            f"(give --limits FILE)"
        )
        return Limits()
    return limits


# ---------------------------------------------------------------------------- table


def _when(intervals: list[list[float]], shown: int = 3) -> str:
    if not intervals:
        return "-"
    parts = [f"{a:.3f}" if a == b else f"{a:.3f}-{b:.3f}" for a, b in intervals[:shown]]
    more = len(intervals) - shown
    return ", ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _row(
    check: str,
    item: str,
    used: str,
    limit: str,
    margin: float | None,
    unit: str,
    at: float | None,
    intervals: list,
) -> str:
    m = "-" if margin is None else f"{margin:+.3g} {unit}"
    t = "-" if at is None else f"{at:.3f}"
    return (
        f"{check:<10} {item:<46} {used:<22} {limit:<14} {m:<16} {t:>8}  "
        f"{_when(intervals)}"
    )


def format_report(report: dict, every: bool = False) -> list[str]:
    """The report as readable lines: a heading, one row per checked item, and the
    verdict. Joint rows are the violated ones plus the tightest few per kind
    (all of them with ``every``)."""
    from motionode.feasibility import relative_margin

    lines = [
        f"preview of {report['source']}",
        (
            f"  {report['samples']} samples at {report['rate_hz']:g} Hz over "
            f"{report['duration_s']:.3f} s; poses: {report['poses']}"
        ),
        (
            f"  root {report['root']}; limits: {report['limits']}; floor y = "
            f"{report['ground']['floor_y_m']:.4f} m ({report['ground']['floor_from']})"
        ),
        "",
        (
            f"{'check':<10} {'item':<46} {'used':<22} {'limit':<14} {'margin':<16} "
            f"{'worst at':>8}  violated (s)"
        ),
    ]
    kinds = (
        ("angle", "angle_deg", "deg"),
        ("velocity", "velocity_deg_s", "deg/s"),
        ("accel", "acceleration_deg_s2", "deg/s2"),
    )
    for check, key, unit in kinds:
        rows = [e for e in report["joints"] if e[key]["worst_margin"] is not None]
        rows.sort(key=lambda e: relative_margin(e[key]))
        for n, e in enumerate(rows):
            v = e[key]
            if not every and n >= TIGHTEST and v["worst_margin"] >= 0:
                break
            if check == "angle":
                used = f"{v['min']:.1f} .. {v['max']:.1f}"
                limit = f"{v['limit'][0]:g} .. {v['limit'][1]:g}"
            else:
                used, limit = f"peak {v['peak']:.0f}", f"{v['limit']:g}"
            lines.append(
                _row(
                    check,
                    f"{e['joint']}.{e['axis']}",
                    used,
                    limit,
                    v["worst_margin"],
                    unit,
                    v["worst_time_s"],
                    v["intervals"],
                )
            )

    col = report["self_collision"]
    if col["worst_margin_m"] is None:
        lines.append(_row("collision", "no pairs to check", "", "", None, "", None, []))
    else:
        for pair in col["colliding_pairs"] or [
            {
                "bones": col["worst_pair"],
                "worst_margin_m": col["worst_margin_m"],
                "worst_time_s": col["worst_time_s"],
                "intervals": [],
            }
        ]:
            lines.append(
                _row(
                    "collision",
                    " / ".join(pair["bones"]),
                    "clearance",
                    "> 0 m",
                    pair["worst_margin_m"],
                    "m",
                    pair["worst_time_s"],
                    pair["intervals"],
                )
            )
    for key, part in (("joints", "worst_joint"), ("capsules", "worst_bone")):
        g = report["ground"][key]
        if g is not None:
            lines.append(
                _row(
                    "ground",
                    f"{key} ({g[part]})",
                    "height above floor",
                    "> 0 m",
                    g["worst_margin_m"],
                    "m",
                    g["worst_time_s"],
                    g["intervals"],
                )
            )
    slide = report["foot_sliding"]
    for foot in slide["feet"]:
        peak = foot["peak_slide_m_s"]
        used = "never in contact" if peak is None else f"peak {peak:.3f} m/s"
        lines.append(
            _row(
                "sliding",
                foot["joint"],
                used,
                f"{slide['max_slide_m_s']:g} m/s",
                foot["worst_margin_m_s"],
                "m/s",
                foot.get("worst_time_s"),
                foot["intervals"],
            )
        )

    summary = report["summary"]
    verdict = (
        "feasible: yes"
        if summary["feasible"]
        else f"feasible: no ({len(summary['violated'])} checks violated)"
    )
    return [*lines, "", verdict]
