"""Generation in continuous time from the bundled default model."""

import numpy as np
import pytest

from motionode.bvh import read_bvh, write_bvh
from motionode.evaluate import clip_speeds, stream_speeds
from motionode.generate import MotionModel, assets_dir

WALK = "clip:dataset-1_walk_normal_001"
RUN = "clip:dataset-1_run_normal_001"


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

    order = "Zrotation Xrotation Yrotation"
    other = parse_bvh(text.replace(order, "Xrotation Yrotation Zrotation", 1), "x.bvh")
    with pytest.raises(ValueError, match="rig differs.*channels"):
        model.add_seed("reordered", other)
    # The same rig with other joint names (exporters differ) is accepted.
    model.add_seed("renamed", parse_bvh(text.replace("Hips", "Pelvis"), "r.bvh"))
    assert "clip:renamed" in model.sources()


# ---------------------------------------------------------------- stream controls

BOW = "clip:dataset-1_bow_normal_001"


@pytest.fixture(scope="module")
def data_step_120(model) -> float:
    """Largest joint displacement between consecutive frames in the bundled clips,
    scaled to 120 fps: each clip's largest per-frame step (any joint, any frame)
    times its frame rate over 120, the maximum over all clips. Scaling assumes
    constant speed within a frame, which understates peaks, so the bound is
    strict."""
    steps = []
    for clip in model.seeds.values():
        pos = clip.world_positions() * model.spec.units_to_m  # (F, J, 3)
        step = np.linalg.norm(np.diff(pos, axis=0), axis=-1).max()
        steps.append(step * clip.fps / 120)
    return max(steps)


@pytest.mark.parametrize("source, target", [(WALK, BOW), ("prior", RUN)])
def test_switch_moves_no_faster_than_the_data(model, data_step_120, source, target):
    stream = model.open(source, seed=1)
    before = stream.positions_at(np.array([1.0]))  # played up to 1 s
    at = stream.switch(target, seed=3, at=1.1)
    assert at == pytest.approx(1.1) and at * stream.rate == round(at * stream.rate)

    times = np.arange(120, 1.7 * 120 + 1) / 120  # through the whole cross-fade
    pos = stream.positions_at(times)
    step = np.linalg.norm(np.diff(pos, axis=0), axis=-1).max(-1)  # (F-1,)
    assert step.max() <= data_step_120
    # What was answered before the switch stands; after it the motion differs.
    np.testing.assert_array_equal(pos[0], before[-1])
    plain = model.open(source, seed=1).positions_at(times)
    np.testing.assert_array_equal(pos[times < at], plain[times < at])
    # At the switch itself the new segment starts all on the old motion.
    np.testing.assert_allclose(pos[times == at], plain[times == at], atol=1e-12)
    assert np.abs(pos[-1] - plain[-1]).max() > 0.02


def test_switch_keeps_position_and_velocity_continuous(model):
    stream = model.open(WALK, seed=0)
    stream.positions_at(np.array([0.9]))
    at = stream.switch(BOW, seed=2, at=1.0)
    d = 1e-3

    def jump(t: float) -> float:
        p = stream.positions_at(np.array([t - d, t, t + d]))  # (3, J, 3)
        return float(np.abs((p[2] - p[1]) - (p[1] - p[0])).max() / d)

    ordinary = max(jump(t) for t in (0.3, 0.7, 1.25, 1.7))
    # The cross-fade's start and end, where the weight's curve begins and stops.
    for t in (at, at + stream.blend):
        assert jump(t) < 3 * ordinary + 1e-3


def test_switch_waits_for_what_was_asked_and_for_a_running_fade(model):
    stream = model.open("prior", seed=0)
    stream.channels_at(np.array([1.52]))
    # Asked for 1.52 s already: the switch starts at the next solver step.
    assert stream.switch(WALK, seed=0, at=0.5) == pytest.approx(46 / 30)
    # A second switch waits for the first cross-fade to finish.
    assert stream.switch("prior", seed=1, at=1.6) == pytest.approx(
        46 / 30 + stream.blend
    )
    # One at a segment's start replaces its re-encoding; one inside its fade waits.
    fresh = model.open("prior", seed=0)
    assert fresh.switch(WALK, seed=0, at=2.0) == 2.0
    later = model.open("prior", seed=0)
    assert later.switch(WALK, seed=0, at=2.1) == pytest.approx(2.0 + later.blend)
    with pytest.raises(ValueError, match="unknown 'clip:nope'"):
        stream.switch("clip:nope", seed=0, at=3.0)
    with pytest.raises(ValueError, match="at"):
        stream.switch(WALK, seed=0, at=float("nan"))


def test_blend_of_sources_mixes_their_latents(model):
    half = [(WALK, 0, 0.5), ("prior", 3, 0.5)]
    stream = model.open(half)
    walk, prior = model.open(WALK, seed=0), model.open("prior", seed=3)
    L = stream.latent
    z = stream._segments[0].state[:L]
    mix = 0.5 * walk._segments[0].state[:L] + 0.5 * prior._segments[0].state[:L]
    np.testing.assert_allclose(z.numpy(), mix.numpy(), rtol=0, atol=1e-12)
    pos = stream.positions_at(np.arange(0, 25) / 12)
    assert np.isfinite(pos).all() and np.abs(np.diff(pos, axis=0)).max() > 0
    # A blend of a source with itself is that source.
    same = model.open([(WALK, 0, 0.25), (WALK, 0, 0.75)])
    np.testing.assert_allclose(
        same.channels_at(np.array([0.0, 1.0])),
        walk.channels_at(np.array([0.0, 1.0])),
        atol=1e-9,
    )
    for bad, match in [
        ([(WALK, 0, 0.5)], "2 to"),
        ([(WALK, 0, 0.5), ("prior", 0, 0.4)], "sum to 0.9"),
        ([(WALK, 0, 1.5), ("prior", 0, -0.5)], "expected > 0"),
        ([(WALK, 0, 0.5), ("clip:nope", 0, 0.5)], "unknown 'clip:nope'"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.open(bad)


def _wrapped(diff: np.ndarray) -> np.ndarray:
    """Differences of channel values with 360-degree turns taken out."""
    return (diff + 180.0) % 360.0 - 180.0


def test_velocities_match_a_central_difference(model):
    stream = model.open(WALK, seed=0)
    stream.channels_at(np.array([0.9]))
    at = stream.switch(BOW, seed=1, at=1.0)
    times = np.array([0.41, at + 0.13, at + 0.29, 2.61])  # two inside the fade
    rows = stream.channels_at(times, continuous=False, velocities=True)  # (T, 2C)
    C = rows.shape[1] // 2
    h = 1e-6
    ahead = stream.channels_at(times + h, continuous=False)
    behind = stream.channels_at(times - h, continuous=False)
    fd = _wrapped(ahead - behind) / (2 * h)
    # RK4 partial steps and float64 rounding over 2h: a loose tolerance.
    assert np.abs(fd - rows[:, C:]).max() < 1e-3 * np.abs(rows[:, C:]).max()
    np.testing.assert_allclose(
        rows[:, :C], stream.channels_at(times, continuous=False), atol=1e-12
    )

    # Unwrapped angles: the derivative follows the Euler triple unwrapping chose.
    grid = np.arange(0.05, 3.0, 0.5)
    pairs = np.sort(np.concatenate([grid - h, grid + h]))
    cont = stream.channels_at(pairs, continuous=True, velocities=True)
    fd = (cont[1::2, :C] - cont[0::2, :C]) / (2 * h)
    mean = (cont[1::2, C:] + cont[0::2, C:]) / 2
    assert np.abs(fd - mean).max() < 1e-3 * np.abs(mean).max()


# torch's forward-mode autodiff loads its decompositions through torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_velocities_are_exact_through_the_decoder(model):
    import torch

    stream = model.open("prior", seed=4)
    L = stream.latent
    seg, tau, y = stream._state_at(1.37)
    by_jvp = stream._velocity(seg, tau, y)

    def channels(tau, y):
        pose = model.denormalize(stream._pose(seg, tau, y))
        return model.feature_channels()(pose, y[2 * L :])

    tau_t = torch.tensor(tau, dtype=torch.float64)
    d_tau, d_y = torch.autograd.functional.jacobian(channels, (tau_t, y))
    direct = d_tau + d_y @ stream._field(seg)(tau_t, y)  # (C,)
    torch.testing.assert_close(by_jvp, direct, rtol=1e-12, atol=1e-9)
    # And with forward-mode differentiation, the other exact way.
    tangents = (torch.ones_like(tau_t), stream._field(seg)(tau_t, y))
    _, forward = torch.func.jvp(channels, (tau_t, y), tangents)
    torch.testing.assert_close(by_jvp, forward, rtol=1e-12, atol=1e-9)
    # The torch decoding is the numpy one.
    np.testing.assert_allclose(
        channels(tau_t, y).detach().numpy(),
        stream.channels_at(np.array([1.37]), continuous=False)[0],
        atol=1e-9,
    )
