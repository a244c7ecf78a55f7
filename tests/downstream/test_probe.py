"""Low-shot logistic probes: balanced deterministic k-shot subsets, standardisation, mean/std over draws,
``--mode probe`` through run_downstream and examples/finetune.py, and clear config errors."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from bigseer.downstream.config import EvalConfig
from bigseer.downstream.probe import kshot_subset, logistic_accuracy, probe_features, standardize
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.downstream.train import run_downstream
from bigseer.errors import ConfigError, DataError

pytestmark = pytest.mark.numerics


def test_kshot_subset_is_balanced_deterministic_and_varies_by_draw():
    targets = [0] * 7 + [1] * 5 + [2] * 9
    a = kshot_subset(targets, 3, seed=0, draw=0)
    assert a == sorted(a) and len(a) == 9
    assert [sum(targets[i] == c for i in a) for c in range(3)] == [3, 3, 3]
    assert a == kshot_subset(targets, 3, seed=0, draw=0)
    others = {tuple(kshot_subset(targets, 3, seed=s, draw=d)) for s in (0, 1) for d in range(4)}
    assert len(others) > 4  # draws and seeds give other subsets
    with pytest.raises(DataError, match="class 'b' has only 5"):
        kshot_subset(targets, 6, class_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="shots"):
        kshot_subset(targets, 0)


def _blobs(n_per: int, dim: int = 8, seed: int = 0, scale: float = 1.0):
    centres = np.random.default_rng(123).normal(size=(3, dim)) * 3  # the same classes in every split
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    x = centres[y] + rng.normal(size=(len(y), dim))
    return x * scale, y


def test_standardize_uses_the_reference_statistics():
    ref = np.array([[0.0, 5.0], [2.0, 5.0]])
    out_ref, out_other = standardize(ref, np.array([[1.0, 5.0], [3.0, 7.0]]))
    np.testing.assert_allclose(out_ref, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(out_other, [[0.0, 0.0], [2.0, 2.0]])  # constant dim: std 1, no division by 0


def test_probe_is_invariant_to_feature_scale_and_learns_tiny_informative_features():
    x, y = _blobs(40)
    xv, yv = _blobs(20, seed=1)
    base = probe_features(x, y, xv, yv, shots=[1, 5], fractions=[0.5], draws=3, seed=0)
    scaled = probe_features(x * 1e-4 + 7, y, xv * 1e-4 + 7, yv, shots=[1, 5], fractions=[0.5], draws=3, seed=0)
    for name in base:
        np.testing.assert_allclose(scaled[name]["top1"], base[name]["top1"])
    assert base["5-shot"]["mean"] > 90 and base["5-shot"]["labeled"] == 15 and base["50%"]["labeled"] == 60
    assert base["1-shot"]["std"] == pytest.approx(np.std(base["1-shot"]["top1"], ddof=1))
    # tiny informative dims next to unit-scale noise dims: unstandardised, L2 at C=1 fits the noise
    rng = np.random.default_rng(5)
    mix, mix_v = (np.hstack([a * 1e-4, rng.normal(size=(len(a), 20))]) for a in (x, xv))
    idx = kshot_subset(y.tolist(), 5)
    raw = logistic_accuracy(mix[idx], y[idx], mix_v, yv)
    std = probe_features(mix, y, mix_v, yv, shots=[5], fractions=[], draws=1)["5-shot"]["mean"]
    assert raw < 50 < std


def test_logistic_accuracy_is_sklearn_logistic_regression():
    x, y = _blobs(10)
    xv, yv = _blobs(10, seed=2)
    clf = LogisticRegression(C=0.3, max_iter=1000).fit(x, y)
    assert logistic_accuracy(x, y, xv, yv, c=0.3) == pytest.approx(100 * (clf.predict(xv) == yv).mean())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_colour_folder(str(tmp_path_factory.mktemp("probe") / "data"), num_classes=3, train_per_class=10,
                               val_per_class=4, size=16)


def _cfg(data, **kw):
    base = dict(mode="probe", data=data, model="regnety_test", batch_size=8, eval_resize=16, eval_crop=16,
                shots=[1, 2], fractions=[0.2], draws=3, cpu=True, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def test_probe_mode_trunk_and_pixels(data, tmp_path):
    res = run_downstream(_cfg(data, output_dir=str(tmp_path / "out")))
    assert set(res["probe"]) == {"1-shot", "2-shot", "20%"}
    assert [r["labeled"] for r in res["probe"].values()] == [3, 6, 6]
    assert all(len(r["top1"]) == 3 for r in res["probe"].values())
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["probe"]["1-shot"]["mean"] == res["probe"]["1-shot"]["mean"]
    pix = run_downstream(_cfg(data, model=None, features="pixels"))
    assert pix["feature_dim"] == 3 * 16 * 16
    assert pix["probe"]["2-shot"]["mean"] == 100.0  # colour classes: raw pixels separate them


def test_finetune_script_probe_mode(data, capsys, monkeypatch):
    argv = ["finetune.py", "--mode", "probe", "--data", data, "--features", "pixels", "--cpu", "--no_progress",
            "--eval_resize", "16", "--eval_crop", "16", "--shots", "1", "--fractions", "--draws", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "finetune.py"), run_name="__main__")
    assert exc.value.code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out["probe"]) == ["1-shot"] and len(out["probe"]["1-shot"]["top1"]) == 2


@pytest.mark.parametrize("kw, match", [
    (dict(shots=[0]), "shots"),
    (dict(fractions=[1.5]), "fractions"),
    (dict(draws=0), "draws"),
    (dict(probe_c=0.0), "probe_c"),
    (dict(features="hog"), "features"),
    (dict(fraction=0.1), "probe takes --fractions"),
    (dict(shots=[], fractions=[]), "at least one labeled budget"),
    (dict(model=None), "--weights"),
])
def test_probe_bad_settings(data, kw, match):
    with pytest.raises(ConfigError, match=match):
        run_downstream(_cfg(data, **kw))
