"""How many 60 fps streams the bridge sustains, and its message rate next to bare pyzmq.

Run by hand: ``python benchmarks/bench_bridge.py [--model PATH] [--seconds 5]``.
Everything runs on loopback (127.0.0.1), the receiver in its own process so it does
not share the server's interpreter lock. Prints:

1. bare pyzmq PUB/SUB: messages per second with a frame-sized payload;
2. the bridge's frame messages per second, many push streams at the top rate, with
   a model that costs nothing (the protocol and server loop alone), and the ratio;
3. for a growing number of 60 fps streams of the real model: p50/p99 lateness
   (arrival at the receiver minus the frame's due time) and gaps, until p99 passes
   5 ms or frames go missing. The largest count that passes is the figure.

By default every stream starts at motion time 0, so all of them start a segment,
and cross-fade into it at twice the cost, at the same moments: the worst case.
``--stagger`` spreads their start times over one segment, as streams opened at
different moments are.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import torch
import zmq

from bridge import protocol as proto
from bridge.client import Client
from bridge.server import Server
from motionode.generate import MotionModel

P99_LIMIT_S = 0.005


def receive(endpoint: str, topics: list[str], seconds: float, conn) -> None:
    """Subscriber process: per frame (stream, seq, t, arrival), for ``seconds``
    after the first frame."""
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 1_000_000
    sub.connect(endpoint)
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    conn.send("ready")
    raw: list[tuple[bytes, float]] = []
    deadline = None
    while deadline is None or time.monotonic() < deadline:
        if not sub.poll(1000):
            if deadline is None:
                continue
            break
        # Keep only the header while receiving, so the receiver keeps up.
        raw.append(
            (sub.recv()[: proto.TOPIC_SIZE + proto.HEADER.size], time.monotonic())
        )
        deadline = deadline or raw[-1][1] + seconds
    rows = []
    for head, now in raw:
        _, _, kind, _, stream, seq, t, _, _ = proto.HEADER.unpack_from(
            head, proto.TOPIC_SIZE
        )
        if kind == proto.KIND_FRAME:
            rows.append((stream, seq, t, now))
    sub.close()
    context.term()
    conn.send(np.array(rows, dtype=np.float64).reshape(-1, 4))


def bare_pyzmq_rate(payload: int, count: int = 200_000) -> float:
    """Messages per second through one PUB/SUB pair on loopback."""
    context = zmq.Context()
    pub, sub = context.socket(zmq.PUB), context.socket(zmq.SUB)
    pub.sndhwm = sub.rcvhwm = count + 10
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    while True:  # wait until the subscription is in
        pub.send(b"x")
        if sub.poll(100):
            sub.recv()
            break
    message = b"0000002a|" + bytes(payload)
    got = 0

    def drain() -> None:
        nonlocal got
        while got < count and sub.poll(2000):
            sub.recv()
            got += 1

    reader = threading.Thread(target=drain)
    reader.start()
    start = time.perf_counter()
    for _ in range(count):
        pub.send(message)
    reader.join()
    elapsed = time.perf_counter() - start
    pub.close(linger=0)
    sub.close(linger=0)
    context.term()
    return got / elapsed


class _Still:
    def __init__(self, channels: int) -> None:
        self.row = np.zeros(channels)

    def channels_at(self, times: np.ndarray, continuous: bool = True) -> np.ndarray:
        return np.broadcast_to(self.row, (len(times), len(self.row)))


class FreeModel:
    """The real rig with poses that cost nothing: the bridge's own overhead."""

    def __init__(self, model: MotionModel) -> None:
        self.skeleton = model.skeleton
        self.spec = SimpleNamespace(units_to_m=model.spec.units_to_m)
        self.metadata = {}

    def sources(self) -> list[str]:
        return ["prior"]

    def open(self, source: str = "prior", seed: int = 0) -> _Still:
        return _Still(self.skeleton.num_channels)


def run_streams(
    model, count: int, fps: float, seconds: float, stagger: bool = False
) -> dict:
    """Open ``count`` push streams at ``fps`` and receive them in another process;
    with ``stagger``, their start times are spread over one 2 s segment."""
    limit = max(64, count)
    with Server(model, max_streams=limit, max_streams_per_client=limit) as server:
        client = Client(server.control_endpoint, timeout=30.0)
        opened = [
            client.request(
                "open",
                source="prior",
                seed=i,
                fps=fps,
                mode="push",
                start=round(2.0 * i / count * fps) / fps if stagger else 0.0,
            )[0]
            for i in range(count)
        ]
        here, there = mp.Pipe()
        proc = mp.get_context("spawn").Process(
            target=receive,
            args=(server.stream_endpoint, [o["topic"] for o in opened], seconds, there),
        )
        proc.start()
        assert here.poll(60) and here.recv() == "ready"
        keep = threading.Event()

        def keep_alive() -> None:
            while not keep.wait(1.0):
                client.keep_alive()

        pinger = threading.Thread(target=keep_alive, daemon=True)
        pinger.start()
        rows = here.recv() if here.poll(seconds + 120) else np.zeros((0, 4))
        keep.set()
        pinger.join()
        proc.join(10)
        client.close()
    return summarise(rows, fps, seconds, count)


def summarise(rows: np.ndarray, fps: float, seconds: float, count: int) -> dict:
    late, gaps, frames = [], 0, 0
    for stream in np.unique(rows[:, 0]):
        mine = rows[rows[:, 0] == stream]
        seq, arrival = mine[:, 1], mine[:, 3]
        gaps += int(seq[-1] - seq[0] + 1 - len(seq))
        frames += len(seq)
        # Frame k falls due at T0 + k / fps; the least late frame stands for T0.
        due = seq / fps
        late.append((arrival - due) - (arrival - due).min())
    late_all = np.concatenate(late) if late else np.zeros(1)
    return {
        "streams": count,
        "received_streams": len(np.unique(rows[:, 0])),
        "frames": frames,
        "expected": int(count * fps * seconds),
        "gaps": gaps,
        "p50_ms": float(np.percentile(late_all, 50) * 1000),
        "p99_ms": float(np.percentile(late_all, 99) * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model file (default: bundled)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        help="stream counts to try at 60 fps, in order",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="try every count, not only until the first that fails",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--stagger",
        action="store_true",
        help="spread the streams' start times over one segment (2 s)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # as 'motionode serve' does by default
    sys.setswitchinterval(0.0005)  # as 'motionode serve' does
    model = MotionModel.load(args.model)
    channels = model.skeleton.num_channels
    payload = len(proto.encode_frame(1, 0, 0.0, 0.0, np.zeros(channels))) - 9

    bare = bare_pyzmq_rate(payload)
    print(f"bare pyzmq PUB/SUB, {payload + 9}-byte messages: {bare:,.0f} msg/s")
    free = run_streams(FreeModel(model), 256, 1000.0, args.seconds)
    ours = free["frames"] / args.seconds
    print(
        f"bridge frames, 256 streams at 1000 fps, free poses: {ours:,.0f} msg/s "
        f"({ours / bare:.2f} of bare pyzmq; "
        f"asked {free['expected'] / args.seconds:,.0f}"
        f"/s, gaps {free['gaps']})"
    )
    print(
        f"\n60 fps streams of the model, {args.seconds:g} s each, "
        f"{'start times spread' if args.stagger else 'all starting together'} "
        f"(pass: p99 lateness < {P99_LIMIT_S * 1000:g} ms, no gaps)"
    )
    best, kept_up = 0, 0
    for count in args.counts:
        r = run_streams(model, count, 60.0, args.seconds, args.stagger)
        ok = (
            r["p99_ms"] < P99_LIMIT_S * 1000
            and r["gaps"] == 0
            and (r["received_streams"] == count)
        )
        print(
            f"  {count:4d} streams: frames {r['frames']:6d}/{r['expected']:6d}  "
            f"gaps {r['gaps']:4d}  p50 {r['p50_ms']:7.2f} ms  "
            f"p99 {r['p99_ms']:8.2f} ms  {'pass' if ok else 'FAIL'}"
        )
        # Keeping up: every frame arrives, half of them within a frame period.
        if r["gaps"] == 0 and r["p50_ms"] < 1000 / 60 and r["frames"] > 0:
            kept_up = max(kept_up, count)
        if ok:
            best = max(best, count)
        if not (ok or args.keep_going):
            break
    print(f"most 60 fps streams with p99 lateness < 5 ms and no gaps: {best}")
    print(f"most 60 fps streams kept up (no gaps, p50 under a frame): {kept_up}")


if __name__ == "__main__":
    main()
