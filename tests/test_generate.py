"""Generation in continuous time from the bundled default model."""

import numpy as np
import pytest

from motionode.bvh import read_bvh, write_bvh
from motionode.evaluate import clip_speeds, stream_speeds
from motionode.generate import MotionModel, assets_dir

WALK = "clip:dataset-1_walk_normal_001"


@pytest.fixture(scope="module")
def model() -> MotionModel:
    return MotionModel.load()


@pytest.fixture(scope="module")
def height(model) -> float:
    return model.skeleton.height() * model.spec.units_to_m


def test_bundled_model_knows_its_data_and_licence(model):
    meta = model.metadata
    assert "CC BY-NC 4.0" in meta["licence"]
    assert len(meta["clips"]) > 100
    assert meta["holdout"] and all("_tired_" in n for n in meta["holdout"])
    assert not set(meta["holdout"]) & set(meta["clips"])
    assert WALK in model.sources() and "prior" in model.sources()


@pytest.mark.parametrize("source", ["prior", WALK])
def test_rates_agree_where_times_coincide(model, source):
    # 1/24, 1/60 and 1/144 s grids meet every 1/12 s (and 1/60, 1/144 every 1/12 too).
    seconds = 2.5
    poses = {}
    for fps in (24, 60, 144):
        stream = model.open(source, seed=5)
        times = np.arange(round(seconds * fps) + 1) / fps
        # As a live stream asks: one frame at a time.
        poses[fps] = np.concatenate(
            [stream.channels_at(t, continuous=False) for t in times]
        )
    np.testing.assert_array_equal(poses[24][::2], poses[60][::5])
    np.testing.assert_array_equal(poses[60][::5], poses[144][::12])
    assert np.abs(np.diff(poses[144], axis=0)).max() > 0  # it moves


def test_pose_depends_only_on_time(model):
    times = np.array([0.0, 0.37, 1.0, 1.5, 2.999, 3.0, 4.2])
    straight = model.open(WALK, seed=2).positions_at(times)
    stream = model.open(WALK, seed=2)
    shuffled = np.array([4.2, 0.37, 3.0, 0.0, 2.999, 1.5, 1.0])
    rows = stream.positions_at(shuffled)
    order = np.argsort(shuffled)
    np.testing.assert_array_equal(rows[order], straight)
    # Asking again, after the stream has moved on, gives the same answers.
    np.testing.assert_array_equal(stream.positions_at(times), straight)
    other = model.open(WALK, seed=3).positions_at(times)
    assert np.abs(other[1:] - straight[1:]).max() > 1e-3


def test_continuation_starts_at_the_seed_clips_last_pose(model, height):
    seed_clip = model.seeds[WALK[5:]]
    last = seed_clip.world_positions()[-1] * model.spec.units_to_m
    first = model.open(WALK, seed=0).positions_at(np.array([0.0]))[0]
    assert np.abs(first - last).max() < 1e-6 * height


def test_no_jump_at_segment_boundaries(model):
    # Displacement between 120 fps frames around each segment boundary, against the
    # largest such displacement in the training rig's clip at its own rate.
    stream = model.open(WALK, seed=1)
    times = np.arange(0, 6 * 120 + 1) / 120
    pos = stream.positions_at(times)
    step = np.linalg.norm(np.diff(pos, axis=0), axis=-1).max(-1)  # (F-1,)
    clip = model.seeds[WALK[5:]]
    data_pos = clip.world_positions() * model.spec.units_to_m
    data_step = np.linalg.norm(np.diff(data_pos, axis=0), axis=-1).max(-1)
    data_at_120 = data_step.max() * clip.fps / 120
    every = round(stream.segment * 120)
    boundary = [i for i in range(len(step)) if (i + 1) % every == 0]
    assert len(boundary) >= 2
    assert step[boundary].max() <= data_at_120


@pytest.mark.parametrize("source", ["prior", WALK])
def test_velocity_is_continuous_across_segment_boundaries(model, source):
    # Velocity just before and just after a time: at a boundary the jump must be
    # no larger than an ordinary instant's (acceleration times the step).
    stream = model.open(source, seed=0)
    d = 1e-3

    def jump(t: float) -> float:
        p = stream.positions_at(np.array([t - d, t, t + d]))  # (3, J, 3)
        return float(np.abs((p[2] - p[1]) - (p[1] - p[0])).max() / d)

    ordinary = max(jump(t) for t in (0.7, 1.3, 2.9, 3.3))
    for k in (1, 2, 3):
        assert jump(k * stream.segment) < 3 * ordinary + 1e-3


def test_sixty_seconds_neither_freeze_nor_blow_up(model):
    # Mean joint speed of every second, against the training data's per-second
    # speeds (stored with the model): no slower than its 1st percentile (a still
    # pose is about 0), no faster than its fastest second. Averaged over each 10 s,
    # where a single still or fast second no longer counts, inside the central 90%.
    data = model.metadata["train_speed_m_per_s"]
    for source in ("prior", WALK):
        for seed in (0, 1):
            speeds = stream_speeds(model, source, seed=seed, seconds=60)
            assert len(speeds) == 60
            assert speeds.min() >= data["p1"], (source, seed, speeds.min())
            assert speeds.max() <= data["p100"], (source, seed, speeds.max())
            tens = speeds.reshape(6, 10).mean(1)
            assert tens.min() >= data["p5"], (source, seed, tens)
            assert tens.max() <= data["p95"], (source, seed, tens)
    walk = stream_speeds(model, WALK, seed=0, seconds=60)
    bundled = clip_speeds(model, [model.seeds[WALK[5:]]])
    # A walk goes on walking: within a factor 1.5 of the seed clip's own pace.
    assert bundled.mean() / 1.5 < np.median(walk) < 1.5 * bundled.mean()


@pytest.mark.parametrize("fps", [24, 144, 59.94])
def test_exported_clip_reads_back_with_its_frame_time(model, tmp_path, fps):
    clip = model.open("prior", seed=0).clip(duration=2.0, fps=fps)
    path = tmp_path / f"gen_{fps}.bvh"
    write_bvh(path, clip)
    back = read_bvh(path)
    assert back.num_frames == clip.num_frames == int(2.0 * fps + 1e-9) + 1
    assert back.frame_time == pytest.approx(1.0 / fps, rel=1e-12)
    np.testing.assert_allclose(back.motion, clip.motion, atol=1e-9)


def test_bad_requests_say_what_is_wrong(model):
    with pytest.raises(ValueError, match="unknown 'clip:nope'"):
        model.open("clip:nope")
    stream = model.open("prior")
    with pytest.raises(ValueError, match=">= 0"):
        stream.channels_at(np.array([-0.5]))
    with pytest.raises(ValueError, match="finite"):
        stream.channels_at(np.array([np.nan]))
    with pytest.raises(ValueError, match="fps"):
        stream.clip(1.0, fps=0)


def test_seed_clip_of_another_rig_is_refused(model):
    text = (assets_dir() / "clips" / "dataset-1_walk_normal_001.bvh").read_text()
    from motionode.bvh import parse_bvh

    other = parse_bvh(text.replace("Hips", "Pelvis"), "renamed.bvh")
    with pytest.raises(ValueError, match="rig differs"):
        model.add_seed("renamed", other)
