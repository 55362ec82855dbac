"""Evaluation figures: in-betweening baselines, plausibility measures, and the
``motionode eval`` report with its JSON and plots."""

import json

import numpy as np
import pytest
import torch

from motionode import features as feat
from motionode.bvh import read_bvh
from motionode.cli import main
from motionode.evaluate import _rig_bones, upsampling_error
from motionode.generate import MotionModel, assets_dir
from motionode.interpolation import cubic_spline, slerp_features
from motionode.plausibility import (
    ContactRule,
    bone_length_error,
    foot_slide,
    jerk,
)
from motionode.torchpose import FeatureFK

CLIPS = assets_dir() / "clips"
WALK = CLIPS / "dataset-1_walk_normal_001.bvh"


@pytest.fixture(scope="module")
def model() -> MotionModel:
    return MotionModel.load()


@pytest.fixture(scope="module")
def walk(model):
    """Features of the bundled walk and their heading-frame joint positions."""
    ff = feat.encode(model.spec, read_bvh(WALK))
    fk = FeatureFK(model.spec).double()
    pos = fk(torch.tensor(model.spec.normalize(ff.pose))).numpy()  # (F, J, 3) m
    return ff, pos, fk


def _mpjpe_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1000 * np.linalg.norm(a - b, axis=-1).mean(-1)  # (F,)


# ---------------------------------------------------------------------------- baselines


def test_slerp_of_a_clip_subsampled_from_itself(model, walk):
    ff, truth, fk = walk
    obs = np.arange(0, len(ff.pose), 3)  # 10 of the clip's 30 fps
    span = np.arange(obs[0], obs[-1] + 1)
    pose = slerp_features(ff.pose[obs], ff.times[obs], ff.times[span])
    got = fk(torch.tensor(model.spec.normalize(pose))).numpy()
    err = _mpjpe_mm(got, truth[span])
    np.testing.assert_array_equal(pose[obs - obs[0]], ff.pose[obs])
    assert np.all(err[obs - obs[0]] == 0)
    between = np.setdiff1d(span, obs) - obs[0]
    # A walk at 10 fps: a few mm between observed frames, never a jump.
    assert 0.5 < err[between].mean() < 10, err[between].mean()
    assert err.max() < 20


def test_cubic_spline_of_a_clip_subsampled_from_itself(walk):
    ff, truth, _ = walk
    obs = np.arange(0, len(ff.pose), 3)
    span = np.arange(obs[0], obs[-1] + 1)
    got = cubic_spline(truth[obs], ff.times[obs], ff.times[span])
    err = _mpjpe_mm(got, truth[span])
    assert np.all(err[obs - obs[0]] == 0)
    assert 0.2 < err.mean() < 10, err.mean()


def test_cubic_spline_on_irregular_times_is_exact_for_a_line():
    t = np.array([0.0, 0.1, 0.15, 0.4, 0.45, 1.0])
    line = np.stack([2 * t - 1, -0.5 * t], axis=1)  # (6, 2)
    at = np.linspace(0, 1, 37)
    np.testing.assert_allclose(
        cubic_spline(line, t, at), np.stack([2 * at - 1, -0.5 * at], 1), atol=1e-12
    )
    # A curve on irregular knots: exact on them, and the textbook natural spline
    # between them.
    s = np.sin(3 * t)
    np.testing.assert_array_equal(cubic_spline(s, t, t), s)
    interpolate = pytest.importorskip("scipy.interpolate")
    expect = interpolate.CubicSpline(t, s, bc_type="natural")(at)
    np.testing.assert_allclose(cubic_spline(s, t, at), expect, atol=1e-12)


def test_baselines_refuse_unordered_times():
    with pytest.raises(ValueError, match="obs_times"):
        cubic_spline(np.zeros(3), np.array([0.0, 0.2, 0.1]), np.array([0.1]))


# ---------------------------------------------------------------------------- plausibility


def _foot(xyz) -> np.ndarray:
    """One foot joint's path (F, 3) as world positions (F, 1, 3)."""
    return np.asarray(xyz, dtype=np.float64)[:, None, :]


def test_planted_foot_does_not_slide():
    F, fps = 60, 30.0
    pos = _foot(np.tile([0.3, 0.05, -0.2], (F, 1)))
    out = foot_slide(pos, fps, [0], np.array([0.05]))
    assert out["slide_mm_s"] == 0.0 and out["contact_fraction"] == 1.0


def test_sliding_foot_slides_at_its_speed():
    F, fps = 60, 30.0
    t = np.arange(F) / fps
    # 0.2 m/s along x and 0.1 m/s along z while resting: 223.6 mm/s horizontal.
    pos = _foot(np.stack([0.2 * t, np.full(F, 0.05), 0.1 * t], 1))
    out = foot_slide(pos, fps, [0], np.array([0.05]))
    assert out["contact_fraction"] == 1.0
    assert out["slide_mm_s"] == pytest.approx(1000 * np.hypot(0.2, 0.1), rel=1e-9)
    # Lifted, or moving faster than the contact speed, it is not planted at all.
    lifted = pos + [0, 0.2, 0]
    assert foot_slide(lifted, fps, [0], np.array([0.05]))["planted_frames"] == 0
    fast = foot_slide(pos * 3, fps, [0], np.array([0.15]), ContactRule(speed_m_s=0.5))
    assert fast["planted_frames"] == 0


def test_jerk_of_a_cubic_is_exact():
    fps = 30.0
    t = np.arange(40) / fps
    path = np.stack([2 * t**3 - t**2 + 3 * t, -(t**3) + 0.5, 0.5 * t**2], 1)
    got = jerk(path[:, None], fps)  # (37, 1)
    assert got.shape == (37, 1)
    np.testing.assert_allclose(got, 6 * np.sqrt(5), rtol=1e-6)


def test_bone_lengths_of_forward_kinematics_are_the_rigs(model):
    bones, lengths = _rig_bones(model)
    assert len(bones) == 20 and lengths.min() > 0.01
    clip = read_bvh(WALK)
    pos = clip.world_positions() * model.spec.units_to_m
    assert bone_length_error(pos, bones, lengths)["max_mm"] < 1e-6
    # Every bone 10% longer (scaled about the hips): the error is 10% of each.
    hips = pos[:, model.spec.root : model.spec.root + 1]
    longer = hips + 1.1 * (pos - hips)
    err = bone_length_error(longer, bones, lengths)
    assert err["mean_mm"] == pytest.approx(100 * lengths.mean(), rel=1e-9)
    assert err["max_mm"] == pytest.approx(100 * lengths.max(), rel=1e-9)


# ---------------------------------------------------------------------------- model


def test_upsampling_puts_the_model_beside_exact_baselines(model):
    clip = read_bvh(CLIPS / "dataset-1_walk_tired_001.bvh")
    out = upsampling_error(model, [clip], seed=3)
    conds = {c["name"]: c for c in out["conditions"]}
    assert list(conds) == ["10 fps", "30 fps", "irregular (half of 30 fps)"]
    full = conds["30 fps"]
    assert full["pure_reconstruction"] and full["between_frames"] == 0
    assert full["slerp_mm"] < 1e-9 and full["spline_mm"] == 0
    # Held-out motion: the model is far better than nothing, far from exact.
    assert 10 < full["model_mm"] < 100
    for name in ("10 fps", "irregular (half of 30 fps)"):
        c = conds[name]
        assert not c["pure_reconstruction"] and c["between_frames"] > 0
        assert 0 < c["slerp_mm"] < 20 and 0 < c["spline_mm"] < 20
        assert c["spline_bone_error_mm"]["max_mm"] > 0.1  # splined positions stretch
    assert conds["10 fps"]["frames"] == 28 * conds["10 fps"]["windows"]
    again = upsampling_error(model, [clip], seed=3)
    assert json.dumps(again) == json.dumps(out)


def test_eval_writes_json_and_plots(tmp_path, capsys):
    report, plots = tmp_path / "eval.json", tmp_path / "plots"
    code = main(
        [
            "eval",
            str(CLIPS / "dataset-1_walk_tired_001.bvh"),
            "--seconds",
            "3",
            "--json",
            str(report),
            "--plots",
            str(plots),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "pure reconstruction" in out and "slide mm/s" in out
    data = json.loads(report.read_text())
    assert {"reconstruction", "prediction", "upsampling", "plausibility"} <= set(data)
    seqs = data["plausibility"]["sequences"]
    assert list(seqs) == [
        "ground truth",
        "reconstruction",
        "generated prior",
        "generated clip:dataset-1_walk_normal_001",
    ]
    for s in seqs.values():
        assert s["bone_error_max_mm"] < 1e-6  # rotations through FK
        assert s["jerk_m_s3"] > 0
    names = [c["name"] for c in data["upsampling"]["conditions"]]
    assert names == ["10 fps", "30 fps", "irregular (half of 30 fps)"]
    speeds = data["speed_m_per_s"]["generated_per_second_by_source"]
    assert [len(v) for v in speeds.values()] == [3, 3]

    import matplotlib.image

    from motionode.eval_plots import SIZE_PX

    for name in ("prediction", "upsampling", "stream_speed"):
        image = matplotlib.image.imread(plots / f"{name}.png")
        assert image.shape[:2] == (SIZE_PX[1], SIZE_PX[0]), name


def test_eval_plots_without_matplotlib_say_what_to_install(
    tmp_path, capsys, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["eval", str(CLIPS / "dataset-1_walk_tired_001.bvh"), "--plots", "p"]
    assert main(argv) == 2
    assert "motionode[preview]" in capsys.readouterr().err
    assert main(["eval", str(WALK), "--sources", "clip:nope"]) == 2
    assert "clip:nope" in capsys.readouterr().err
