"""The ``motionode`` command end to end, in-process."""

import json
import shutil

import pytest

from motionode.bvh import read_bvh
from motionode.checkpoint import read_metadata
from motionode.cli import main
from motionode.generate import MotionModel, assets_dir

CLIPS = assets_dir() / "clips"


def test_train_writes_a_model_that_generates(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("walk_normal", "bow_normal", "walk_tired"):
        shutil.copy(CLIPS / f"dataset-1_{name}_001.bvh", data)
    out = tmp_path / "m.safetensors"
    code = main(
        [
            "train",
            str(data),
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch",
            "4",
            "--holdout",
            "*_tired_*",
            "--licence",
            "test-only",
        ]
    )
    assert code == 0
    meta = read_metadata(out)
    assert meta["holdout"] == ["dataset-1_walk_tired_001.bvh"]
    assert sorted(meta["clips"]) == [
        "dataset-1_bow_normal_001.bvh",
        "dataset-1_walk_normal_001.bvh",
    ]
    assert meta["licence"] == "test-only" and meta["step"] == 2
    assert meta["prior_windows"] > 0
    assert (tmp_path / "m.ckpt.safetensors").exists()
    model = MotionModel.load(out, seeds=[])
    assert model.open("prior").channels_at([0.0, 0.5]).shape == (2, 132)
    assert "model written to" in capsys.readouterr().out


@pytest.mark.parametrize("fps", ["24", "144"])
def test_sample_exports_bvh_at_the_asked_rate(tmp_path, fps):
    out = tmp_path / "s.bvh"
    code = main(
        [
            "sample",
            "--out",
            str(out),
            "--fps",
            fps,
            "--duration",
            "1.5",
            "--source",
            "clip:dataset-1_run_normal_001",
            "--seed",
            "4",
        ]
    )
    assert code == 0
    clip = read_bvh(out)
    assert clip.frame_time == pytest.approx(1 / float(fps), rel=1e-12)
    assert clip.num_frames == round(1.5 * float(fps)) + 1


def test_eval_reports_model_far_below_mean_pose(tmp_path, capsys):
    report = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            str(CLIPS / "dataset-1_walk_tired_001.bvh"),
            str(CLIPS / "dataset-1_run_tired_001.bvh"),
            "--seconds",
            "5",
            "--json",
            str(report),
        ]
    )
    assert code == 0
    rec = json.loads(report.read_text())["reconstruction"]
    assert rec["model_mm"] < 0.5 * rec["mean_pose_mm"]
    assert "mean pose" in capsys.readouterr().out


def test_bad_seed_files_give_clear_errors(tmp_path, capsys):
    text = (CLIPS / "dataset-1_walk_normal_001.bvh").read_text().splitlines()
    truncated = tmp_path / "cut.bvh"
    truncated.write_text("\n".join(text[:40]))
    code = main(
        ["sample", "--out", str(tmp_path / "o.bvh"), "--seed-clip", str(truncated)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cut.bvh:40:" in err  # file and line

    not_bvh = tmp_path / "picture.bvh"
    not_bvh.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert (
        main(["sample", "--out", str(tmp_path / "o.bvh"), "--seed-clip", str(not_bvh)])
        == 2
    )
    err = capsys.readouterr().err
    assert "picture.bvh" in err
    assert not (tmp_path / "o.bvh").exists()


SEEDED = {
    "train": ["train", "clips", "--out", "m.safetensors"],
    "sample": ["sample", "--out", "o.bvh"],
    "eval": ["eval"],
    "listen": ["listen"],
    "demo": ["demo"],
    "preview": ["preview", "prior", "--out", "p"],
}


@pytest.mark.parametrize("command", sorted(SEEDED))
@pytest.mark.parametrize("bad", ["-1", str(2**63), "1.5", "seven"])
def test_seeds_outside_the_range_are_usage_errors(
    command, bad, tmp_path, capsys, monkeypatch
):
    # Seeds are what the bridge protocol carries: integers from 0 to 2^63 - 1.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(SEEDED[command] + ["--seed", bad])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: motionode " + command)
    assert err.endswith(
        f"motionode {command}: error: argument --seed: expected a whole number "
        f"from 0 to 9223372036854775807, got {bad!r}\n"
    )
    assert not any(tmp_path.iterdir())


def test_seeds_span_what_the_bridge_protocol_carries():
    from bridge.protocol import MAX_SEED as PROTOCOL_MAX
    from motionode.seeds import MAX_SEED

    assert MAX_SEED == PROTOCOL_MAX == 2**63 - 1


def test_the_largest_seed_samples(tmp_path):
    out = tmp_path / "s.bvh"
    argv = ["sample", "--out", str(out), "--duration", "0.2", "--seed"]
    assert main(argv + [str(2**63 - 1)]) == 0
    assert read_bvh(out).num_frames == 7


def test_demo_streams_three_rates_that_agree(capsys):
    assert main(["demo", "--seconds", "1.5"]) == 0
    out = capsys.readouterr().out
    for fps in ("24", "60", "144"):
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{fps} fps"))
        assert "consecutive: True" in line and "t == seq/fps: True" in line
        assert "gaps: 0" in line
    assert "largest channel difference there: 0\n" in out


def test_listen_records_what_it_receives(tmp_path, capsys):
    from bridge.server import Server

    model = MotionModel.load()
    out = tmp_path / "take.bvh"
    with Server(model) as server:
        code = main(
            [
                "listen",
                "--control",
                server.control_endpoint,
                "--fps",
                "50",
                "--seconds",
                "1",
                "--record",
                str(out),
                "--source",
                "clip:dataset-1_walk_normal_001",
                "--seed",
                "3",
            ]
        )
    assert code == 0
    take = read_bvh(out)
    assert take.frame_time == pytest.approx(1 / 50, rel=1e-12)
    assert take.num_frames >= 40
    # The recording holds the model's poses at k / 50 s (float32 on the wire).
    stream = model.open("clip:dataset-1_walk_normal_001", seed=3)
    expect = stream.positions_at(take.times)
    got = take.world_positions() * model.spec.units_to_m
    assert abs(got - expect).max() < 1e-4
    assert "frames" in capsys.readouterr().out


def test_listen_keeps_the_take_when_the_server_stops(tmp_path, capsys):
    import threading

    from bridge.server import Server

    server = Server(MotionModel.load())
    server.start()
    stopper = threading.Timer(1.5, server.stop)
    stopper.start()
    out = tmp_path / "cut.bvh"
    try:
        code = main(
            [
                "listen",
                "--control",
                server.control_endpoint,
                "--fps",
                "40",
                "--seconds",
                "20",
                "--record",
                str(out),
            ]
        )
    finally:
        stopper.join()
        server.stop()
    assert code == 0
    assert "stream ended" in capsys.readouterr().out
    assert read_bvh(out).num_frames >= 20


def test_impossible_requests_exit_2_with_the_reason(tmp_path, capsys):
    other = tmp_path / "other_rig.bvh"
    text = (CLIPS / "dataset-1_walk_tired_001.bvh").read_text()
    order = "Zrotation Xrotation Yrotation"
    other.write_text(text.replace(order, "Xrotation Yrotation Zrotation", 1))
    cases = [
        (["eval", str(other)], "rig differs"),
        (["sample", "--out", str(tmp_path / "x.bvh"), "--fps", "1e9"], "frames"),
        (
            [
                "train",
                str(CLIPS),
                "--out",
                str(tmp_path / "m.safetensors"),
                "--batch",
                "0",
            ],
            "batch_size",
        ),
        (
            [
                "train",
                str(CLIPS),
                "--out",
                str(tmp_path / "m.safetensors"),
                "--device",
                "tpu",
            ],
            "device",
        ),
    ]
    for argv, reason in cases:
        assert main(argv) == 2, argv
        assert reason in capsys.readouterr().err, argv
    assert not (tmp_path / "x.bvh").exists()
    assert not (tmp_path / "m.safetensors").exists()


def test_keys_then_listen_over_curve(tmp_path, capsys):
    from bridge.security import ServerKeys
    from bridge.server import Server

    keys = tmp_path / "keys"
    assert main(["keys", "server", "me", "--dir", str(keys)]) == 0
    assert "me.key_secret (keep private)" in capsys.readouterr().out
    assert main(["keys", "me", "--dir", str(keys)]) == 2
    assert "not overwritten" in capsys.readouterr().err

    listen = ["listen", "--fps", "30", "--seconds", "0.5", "--timeout", "0.5"]
    curve = [
        "--server-key",
        str(keys / "server.key"),
        "--curve-secret",
        str(keys / "me.key_secret"),
    ]
    server_keys = ServerKeys.load(keys / "server.key_secret", keys / "me.key")
    with Server(MotionModel.load(), keys=server_keys) as server:
        control = ["--control", server.control_endpoint]
        assert main(listen + control + curve) == 0
        assert "gaps 0  off-grid times 0" in capsys.readouterr().out
        assert main(listen + control) == 2
        assert "handshake failed" in capsys.readouterr().err
        assert main(listen + control + curve[:2]) == 2
        assert "--curve-secret" in capsys.readouterr().err
