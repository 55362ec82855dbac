"""The ``motionode`` command: train, sample, eval, serve, listen, demo."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from motionode.preview_cli import add_parser as add_preview_parser
from motionode.seeds import MAX_SEED, seed_argument

log = logging.getLogger("motionode")


# ---------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from motionode.train import Distributed, find_clips

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = find_clips(args.clips, exclude=args.holdout)
    held = [p for p in find_clips(args.clips) if p not in set(paths)]
    if not paths:
        raise ValueError("clips: no BVH clips found (after leaving out --holdout)")
    dist = Distributed.from_env()  # under torchrun: one of WORLD_SIZE processes
    try:
        return _train(args, paths, held, dist)
    finally:
        dist.close()


def _train(args: argparse.Namespace, paths: list, held: list, dist) -> int:
    from tqdm import tqdm

    from motionode.train import TrainConfig, Trainer, load_training_clips

    say = print if dist.leader else (lambda *a, **k: None)
    say(f"training on {len(paths)} clips, holding out {len(held)}")
    clips = load_training_clips(paths)
    out = Path(args.out)
    if args.resume:
        trainer = Trainer.resume(
            args.resume, clips, args.device, steps=args.steps, dist=dist
        )
    else:
        config = TrainConfig(
            steps=4000 if args.steps is None else args.steps,
            batch_size=args.batch,
            seed=args.seed,
            lr=args.lr,
            units_to_m=args.units,
            licence=args.licence,
            checkpoint_every=args.checkpoint_every,
            amp=not args.no_amp,
        )
        trainer = Trainer(clips, config, device=args.device, dist=dist)
    where = f", {dist.world_size} processes" if dist.world_size > 1 else ""
    amp = ", bfloat16 autocast" if trainer.amp_enabled else ""
    say(f"device {trainer.device}{where}{amp}, {trainer.spec.dim} features per frame")
    bar = tqdm(
        total=trainer.config.steps,
        initial=trainer.step,
        unit="step",
        dynamic_ncols=True,
        disable=not dist.leader,
    )

    def progress(step: int, terms: dict) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(
                loss=f"{terms['total']:.3f}", pos_mm=f"{1000 * terms['pos_m']:.0f}"
            )

    held_names = [p.name for p in held]
    trainer.extra_metadata = {"holdout": held_names}
    ckpt = _training_checkpoint(out)
    last = trainer.train(ckpt, progress=progress, clip_names=[p.name for p in paths])
    bar.close()
    if not dist.leader:
        return 0
    windows = finalize_model(ckpt, clips, out, held_names)
    print(
        f"done: step {trainer.step}, loss {last.get('total', float('nan')):.4f}; "
        f"latent prior fitted on {windows} windows"
    )
    print(f"model written to {out} (training checkpoint for --resume: {ckpt})")
    return 0


def _training_checkpoint(out: Path) -> Path:
    return out.with_name(out.stem + ".ckpt" + out.suffix)


def finalize_model(checkpoint: Path, clips: list, out: Path, holdout: list[str]) -> int:
    """Write the shippable model: weights without optimiser state, plus the latent
    prior fitted on the training clips. Returns the number of windows fitted."""
    from motionode.evaluate import clip_speeds
    from motionode.generate import MotionModel

    model = MotionModel.load(checkpoint, seeds=[])
    windows = model.fit_prior(clips)
    # Generated streams are checked against how fast the training motion moves.
    speeds = clip_speeds(model, clips)
    percentiles = [0, 1, 5, 25, 50, 75, 95, 99, 100]
    speed = {
        f"p{q}": float(v)
        for q, v in zip(percentiles, np.percentile(speeds, percentiles))
    }
    model.save(
        out,
        extra={
            "holdout": holdout,
            "prior_windows": windows,
            "train_speed_m_per_s": speed,
        },
    )
    return windows


# ---------------------------------------------------------------------------- sample


def _load_model(args: argparse.Namespace):
    from motionode.generate import MotionModel

    seeds = args.seed_clip or None
    return MotionModel.load(args.model, seeds=seeds)


def _cmd_sample(args: argparse.Namespace) -> int:
    from motionode.bvh import write_bvh

    model = _load_model(args)
    stream = model.open(args.source, seed=args.seed)
    clip = stream.clip(args.duration, args.fps)
    write_bvh(args.out, clip, rotation_order=args.rotation_order)
    print(
        f"wrote {args.out}: {clip.num_frames} frames at {args.fps:g} fps "
        f"({args.duration:g} s) from {args.source}, seed {args.seed}"
    )
    return 0


# ---------------------------------------------------------------------------- eval


def _cmd_eval(args: argparse.Namespace) -> int:
    from motionode.eval_cli import run

    return run(args, _load_model(args))


# ---------------------------------------------------------------------------- live


def _prompt_threads() -> None:
    """Let the thread that sends frames take the interpreter within 0.5 ms of
    its time, instead of Python's default 5 ms, while the solver computes."""
    sys.setswitchinterval(0.0005)


def _cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from bridge.server import Server

    if args.threads:
        torch.set_num_threads(args.threads)
    _prompt_threads()
    keys = None
    if args.curve_secret or args.curve_allow:
        from bridge.security import ServerKeys

        if not (args.curve_secret and args.curve_allow):
            raise ValueError(
                "--curve-secret and --curve-allow: CURVE needs both the server's "
                "secret key file and the allowed client keys"
            )
        keys = ServerKeys.load(args.curve_secret, args.curve_allow)
    model = _load_model(args)
    server = Server(
        model,
        control=args.control,
        stream=args.stream,
        lease=args.lease,
        keys=keys,
        insecure=args.insecure,
    )
    server.start()
    print(f"serving {args.model or 'the bundled model'}")
    print(f"  control {server.control_endpoint}")
    print(f"  stream  {server.stream_endpoint}")
    if keys is not None:
        print(f"  CURVE   on, {len(keys.allowed)} allowed client keys")
        print(f"  server public key {keys.public.decode()}")
    print(f"  sources {', '.join(model.sources())}")
    print("Ctrl-C stops")
    # A plain `kill` should also end streams cleanly, with their end messages.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()
        print("server stopped")


def _cmd_keys(args: argparse.Namespace) -> int:
    from bridge.security import generate_keys

    for name in args.names:
        public, secret = generate_keys(args.dir, name)
        print(f"{name}: {public} (share), {secret} (keep private)")
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class _Stats:
    """Running figures of one received stream."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.frames = 0
        self.first_seq: int | None = None
        self.last_seq = -1
        self.bad_times = 0
        self.latency: list[float] = []

    def add(self, frame, offset: float) -> None:
        self.frames += 1
        if self.first_seq is None:
            self.first_seq = frame.seq
        self.last_seq = frame.seq
        if frame.t != frame.seq / self.fps:
            self.bad_times += 1
        self.latency.append(time.monotonic() + offset - frame.sent)


def _cmd_listen(args: argparse.Namespace) -> int:
    from bridge.client import Client

    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ValueError(f"--seconds: expected a positive number, got {args.seconds}")
    keys = None
    if args.server_key or args.curve_secret:
        from bridge.security import ClientKeys

        if not (args.server_key and args.curve_secret):
            raise ValueError(
                "--server-key and --curve-secret: CURVE needs both the server's "
                "public key and this client's secret key file"
            )
        keys = ClientKeys.load(args.server_key, args.curve_secret)
    client = Client(args.control, args.stream_endpoint, timeout=args.timeout, keys=keys)
    try:
        offset = client.clock_offset()
        stream = client.open_stream(args.source, fps=args.fps, seed=args.seed)
        sk = stream.skeleton
        print(
            f"stream {stream.id}: {args.source} at {args.fps:g} fps, "
            f"{len(sk['names'])} joints, {sk['num_channels']} channels"
        )
        stats, rows = _Stats(args.fps), []
        try:
            _receive(stream, args, stats, rows, offset)
        finally:
            # Whatever ends the take (its length, Ctrl-C, a lost or stopped server)
            # what arrived is kept.
            print(_stats_line(stats, stream.gaps, stats.last_seq / args.fps))
            if args.record and rows:
                _record(args.record, sk, rows, args.fps)
        if stream.ended is None:
            client.close_stream(stream)
    finally:
        client.close()
    return 0


def _receive(
    stream, args: argparse.Namespace, stats: _Stats, rows: list, offset: float
) -> None:
    """Read frames for ``args.seconds``, printing figures once a second."""
    from bridge.client import StreamEnded

    end = time.monotonic() + args.seconds
    next_report = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            frame = stream.recv(timeout=max(1.0, 5.0 / args.fps))
        except StreamEnded as exc:
            print(f"stream ended: {exc}")
            return
        stats.add(frame, offset)
        if args.record:
            rows.append(frame.channels)
        if time.monotonic() >= next_report:
            next_report += 1.0
            print(_stats_line(stats, stream.gaps, frame.t))


def _stats_line(stats: _Stats, gaps: int, t: float) -> str:
    lat = 1000 * float(np.median(stats.latency)) if stats.latency else float("nan")
    return (
        f"t={t:8.3f} s  frames {stats.frames:6d}  gaps {gaps}  "
        f"off-grid times {stats.bad_times}  median latency {lat:.2f} ms"
    )


def _record(path: str, skeleton: dict, rows: list, fps: float) -> None:
    from motionode.bvh import Clip, Skeleton, write_bvh

    sk = Skeleton.from_dict(skeleton)
    clip = Clip(sk, np.asarray(rows, dtype=np.float64), 1.0 / fps, "stream")
    write_bvh(path, clip)
    print(f"recorded {clip.num_frames} frames at {fps:g} fps to {path}")


def _cmd_demo(args: argparse.Namespace) -> int:
    """A server on the bundled model and one client reading three rates at once."""
    import torch

    from bridge.client import Client
    from bridge.server import Server

    torch.set_num_threads(1)  # per-frame work is small: one thread is fastest
    _prompt_threads()
    model = _load_model(args)
    rates = args.fps
    with _running(Server(model)) as server:
        print(
            f"server on {server.control_endpoint} (control), "
            f"{server.stream_endpoint} (stream)"
        )
        client = Client(server.control_endpoint)
        try:
            hello = client.hello()
            print(f"model: {hello.get('model', {}).get('licence', '?')}")
            streams = [
                client.open_stream(args.source, fps=f, seed=args.seed) for f in rates
            ]
            print(
                f"{len(streams)} streams of {args.source} (seed {args.seed}) at "
                f"{', '.join(f'{f:g}' for f in rates)} fps, {args.seconds:g} s"
            )
            got = _read_streams(streams, args.seconds)
        finally:
            client.close()
    _report_demo(rates, streams, got)
    return 0


class _running:
    """Start a server for a ``with`` block and always stop it."""

    def __init__(self, server) -> None:
        self.server = server

    def __enter__(self):
        self.server.start()
        return self.server

    def __exit__(self, *exc) -> None:
        self.server.stop()


def _read_streams(streams: list, seconds: float) -> list[dict[int, object]]:
    """Frames by sequence number from each stream, read in turn for ``seconds``."""
    got: list[dict[int, object]] = [{} for _ in streams]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for stream, frames in zip(streams, got):
            try:
                frame = stream.recv(timeout=0.002)
            except TimeoutError:
                continue
            frames[frame.seq] = frame
    return got


def _report_demo(rates: list[float], streams: list, got: list[dict]) -> None:
    for fps, stream, frames in zip(rates, streams, got):
        seqs = sorted(frames)
        consecutive = seqs == list(range(seqs[0], seqs[-1] + 1)) if seqs else False
        exact = all(frames[s].t == s / fps for s in seqs)
        print(
            f"  {fps:7g} fps: {len(seqs):5d} frames, seq {seqs[0] if seqs else '-'}"
            f"..{seqs[-1] if seqs else '-'}, consecutive: {consecutive}, "
            f"t == seq/fps: {exact}, gaps: {stream.gaps}"
        )
    # Where time stamps coincide, every rate must carry the same pose.
    by_time: dict[float, list] = {}
    for frames in got:
        for f in frames.values():
            by_time.setdefault(f.t, []).append(f.channels)
    shared = [v for v in by_time.values() if len(v) > 1]
    worst = max(
        (float(np.abs(a - b).max()) for v in shared for a in v for b in v), default=0.0
    )
    print(
        f"  {len(shared)} time stamps shared between rates; largest channel "
        f"difference there: {worst:g}"
    )


# ---------------------------------------------------------------------------- main


_FMT = argparse.ArgumentDefaultsHelpFormatter
SEED_HELP = f"same seed, same motion (0 to {MAX_SEED})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="motionode",
        description="Continuous-time motion synthesis with a latent-ODE VAE.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", formatter_class=_FMT, help="train a model on BVH clips of one rig"
    )
    t.add_argument("clips", nargs="+", help="BVH files or folders")
    t.add_argument(
        "--out",
        required=True,
        help="model file (.safetensors); training checkpoints go beside "
        "it as <name>.ckpt.safetensors",
    )
    t.add_argument(
        "--holdout",
        nargs="*",
        default=[],
        help="file-name globs left out for evaluation, e.g. '*_tired_*'",
    )
    t.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps in all; none: 4000, or the resumed run's",
    )
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument(
        "--seed",
        type=seed_argument,
        default=0,
        help=f"fixes initial weights and every batch (0 to {MAX_SEED})",
    )
    t.add_argument(
        "--units",
        type=float,
        default=0.01,
        help="metres per rig length unit (0.01 for centimetres)",
    )
    t.add_argument(
        "--licence",
        default="unknown",
        help="licence of the training clips, stored in the model",
    )
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--resume", help="continue from this checkpoint")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument(
        "--no-amp",
        action="store_true",
        help="train in float32 on CUDA too (default: bfloat16 autocast there)",
    )
    t.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
    t.set_defaults(func=_cmd_train)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--model", default=None, help="model checkpoint; none: the bundled model"
        )
        q.add_argument(
            "--seed-clip",
            nargs="*",
            default=[],
            help="BVH clips usable as sources 'clip:<file stem>'",
        )

    s = sub.add_parser(
        "sample", formatter_class=_FMT, help="write generated motion to a BVH file"
    )
    model_args(s)
    s.add_argument("--out", required=True, help="BVH file to write")
    s.add_argument("--source", default="prior", help="'prior' or 'clip:<name>'")
    s.add_argument("--seed", type=seed_argument, default=0, help=SEED_HELP)
    s.add_argument("--duration", type=float, default=10.0, help="seconds")
    s.add_argument("--fps", type=float, default=30.0, help="any positive rate")
    s.add_argument(
        "--rotation-order",
        default=None,
        help="write every joint in this Euler order (e.g. ZXY)",
    )
    s.set_defaults(func=_cmd_sample)

    e = sub.add_parser(
        "eval", formatter_class=_FMT, help="measure a model on held-out clips"
    )
    model_args(e)
    e.add_argument(
        "clips",
        nargs="*",
        help="BVH files or folders (default: the model's held-out clips)",
    )
    e.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="length of each generated stream whose speed and plausibility "
        "are reported",
    )
    e.add_argument(
        "--sources",
        nargs="+",
        default=None,
        help="generated streams to measure ('prior', 'clip:<name>'); none: the "
        "prior and a walk seed clip",
    )
    e.add_argument(
        "--seed",
        type=seed_argument,
        default=0,
        help="fixes the generated streams and the irregular observation times "
        f"(0 to {MAX_SEED})",
    )
    e.add_argument("--json", help="also write the figures to this JSON file")
    e.add_argument(
        "--plots",
        metavar="DIR",
        help="also draw PNG plots into this folder (needs matplotlib)",
    )
    e.set_defaults(func=_cmd_eval)

    v = sub.add_parser(
        "serve", formatter_class=_FMT, help="stream the model over ZeroMQ"
    )
    model_args(v)
    v.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for poses (0: torch's own); a frame is small work, "
        "fastest on one thread, and the other cores serve the sockets",
    )
    v.add_argument(
        "--control", default="tcp://127.0.0.1:5555", help="request/reply endpoint"
    )
    v.add_argument(
        "--stream", default="tcp://127.0.0.1:5556", help="publishing endpoint"
    )
    v.add_argument(
        "--lease",
        type=float,
        default=30.0,
        help="seconds a silent client's streams are kept",
    )
    v.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="the server's .key_secret file (see 'motionode keys'): turns on "
        "CURVE encryption and client authentication",
    )
    v.add_argument(
        "--curve-allow",
        metavar="PATH",
        help="a folder of allowed client .key files, or one such file",
    )
    v.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding an address other than 127.0.0.1 without CURVE "
        "(anyone who reaches it can read and open streams)",
    )
    v.set_defaults(func=_cmd_serve)

    k = sub.add_parser(
        "keys",
        formatter_class=_FMT,
        help="make CURVE key pairs for 'serve' and its clients",
    )
    k.add_argument("names", nargs="+", help="one key pair per name, e.g. server me")
    k.add_argument("--dir", default="keys", help="folder to write them in")
    k.set_defaults(func=_cmd_keys)

    li = sub.add_parser(
        "listen", formatter_class=_FMT, help="receive a stream, show stats, record BVH"
    )
    li.add_argument(
        "--control",
        default="tcp://127.0.0.1:5555",
        help="the server's control endpoint",
    )
    li.add_argument(
        "--stream-endpoint",
        default=None,
        help="publishing endpoint; none: asked from the server",
    )
    li.add_argument("--source", default="prior", help="'prior' or 'clip:<name>'")
    li.add_argument("--seed", type=seed_argument, default=0, help=SEED_HELP)
    li.add_argument("--fps", type=float, default=60.0, help="any positive rate")
    li.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="how long to listen (Ctrl-C ends sooner, keeping the take)",
    )
    li.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds to wait for each server reply",
    )
    li.add_argument("--record", help="write what was received to this BVH file")
    li.add_argument(
        "--server-key",
        metavar="KEY",
        help="the server's CURVE public key: its .key file or 40 Z85 characters",
    )
    li.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="this client's .key_secret file, allowed by the server",
    )
    li.set_defaults(func=_cmd_listen)

    d = sub.add_parser(
        "demo", formatter_class=_FMT, help="serve the bundled model to a local client"
    )
    model_args(d)
    d.add_argument(
        "--source",
        default="clip:dataset-1_walk_normal_001",
        help="'prior' or 'clip:<name>'",
    )
    d.add_argument("--seed", type=seed_argument, default=0, help=SEED_HELP)
    d.add_argument(
        "--fps",
        type=float,
        nargs="+",
        default=[24.0, 60.0, 144.0],
        help="one stream per rate, all read by one client",
    )
    d.add_argument("--seconds", type=float, default=5.0, help="how long to read")
    d.set_defaults(func=_cmd_demo)

    add_preview_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Network failures and protocol errors from the bridge, reported plainly.
        from bridge.client import StreamEnded
        from bridge.protocol import ProtocolError

        if not isinstance(exc, ProtocolError | StreamEnded | zmq.ZMQError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
