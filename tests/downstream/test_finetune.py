"""Full fine-tuning: it learns, its checkpoint resumes exactly, and bad settings fail up front."""

import json

import pytest
import torch

from bigseer.downstream.config import EvalConfig
from bigseer.downstream.run_state import checkpoint_path
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.downstream.train import lr_at, run_downstream
from bigseer.downstream.weights import load_trunk
from bigseer.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_colour_folder(str(tmp_path_factory.mktemp("ft") / "data"), num_classes=3, train_per_class=8,
                               val_per_class=3, size=32)


def _cfg(data, **kw):
    base = dict(mode="finetune", data=data, model="regnety_test", batch_size=8, lr=0.05, train_crop=32,
                eval_resize=32, eval_crop=32, jitter_strength=0.0, cpu=True, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def test_paper_defaults_and_step_schedule():
    cfg = EvalConfig(data="x", model="regnety_test").resolved()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (35, 256, 0.0125, 0.9, 1e-4)
    assert cfg.lr_milestones == [30] and (cfg.train_crop, cfg.eval_resize, cfg.eval_crop) == (224, 256, 224)
    assert lr_at(cfg, 29) == 0.0125 and lr_at(cfg, 30) == pytest.approx(0.00125)
    lin = EvalConfig(mode="linear", data="x", model="regnety_test").resolved()
    assert lin.jitter_strength == 0.0 and lin.lr_milestones == [8, 16, 24]


def test_finetune_trains_the_whole_network(data, tmp_path):
    out = str(tmp_path / "out")
    res = run_downstream(_cfg(data, epochs=3, output_dir=out))
    hist = res["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert res["final"]["top1"] > 100 / 3  # better than chance on 3 colour classes
    state = torch.load(checkpoint_path(out), weights_only=True)
    fresh = load_trunk(None, "regnety_test", seed=0).state_dict()
    assert state["epoch"] == 3
    for key in ("stem.conv.weight", "s4.b1.conv2.conv.weight", "s1.b1.conv1.bn.running_mean"):
        assert not torch.equal(state["model"][f"trunk.{key}"], fresh[key]), key
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["final"]["top1"] == res["final"]["top1"]


def test_resume_matches_the_uninterrupted_run(data, tmp_path):
    full = run_downstream(_cfg(data, epochs=3, lr_milestones=[2], output_dir=str(tmp_path / "a")))
    part = str(tmp_path / "b")
    first = run_downstream(_cfg(data, epochs=2, lr_milestones=[2], output_dir=part))
    assert len(first["history"]) == 2
    resumed = run_downstream(_cfg(data, epochs=3, lr_milestones=[2], output_dir=part, resume=True))
    assert resumed["history"] == [{**h, "time_s": r["time_s"]} for h, r in zip(full["history"], resumed["history"])]
    a = torch.load(checkpoint_path(str(tmp_path / "a")), weights_only=True)["model"]
    b = torch.load(checkpoint_path(part), weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_auto_starts_fresh_then_continues(data, tmp_path):
    """``resume="auto"`` (``--resume auto``, as in pretraining): no checkpoint -> a fresh run; with one -> its
    continuation, equal to the uninterrupted run."""
    full = run_downstream(_cfg(data, epochs=2, output_dir=str(tmp_path / "a")))
    part = str(tmp_path / "b")
    first = run_downstream(_cfg(data, epochs=1, output_dir=part, resume="auto"))
    assert len(first["history"]) == 1
    resumed = run_downstream(_cfg(data, epochs=2, output_dir=part, resume="auto"))
    assert resumed["history"] == [{**h, "time_s": r["time_s"]} for h, r in zip(full["history"], resumed["history"])]


def test_resume_refuses_changed_settings_and_fresh_run_refuses_old_dir(data, tmp_path):
    out = str(tmp_path / "out")
    run_downstream(_cfg(data, epochs=1, output_dir=out))
    with pytest.raises(ConfigError, match=r"resume: lr=0\.1 differs from the checkpoint's 0\.05"):
        run_downstream(_cfg(data, epochs=2, lr=0.1, output_dir=out, resume=True))
    with pytest.raises(ConfigError, match="already holds checkpoint.pt"):
        run_downstream(_cfg(data, epochs=1, output_dir=out))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_downstream(_cfg(data, epochs=1, output_dir=str(tmp_path / "empty"), resume=True))


@pytest.mark.parametrize("kw,match", [
    (dict(mode="lowshot"), "lowshot needs --fraction"),
    (dict(mode="linear", fraction=0.1), "fraction is only used by lowshot and knn"),
    (dict(model=None), "--weights .* or --model"),
    (dict(model="regnety_nope"), "unknown RegNetY preset 'regnety_nope'"),
    (dict(batch_size=0), "batch_size=0 is invalid"),
    (dict(eval_crop=64), "eval_crop=64 is invalid"),
    (dict(lr_milestones=[5, 2]), "lr_milestones"),
])
def test_bad_settings_are_one_clear_error(data, kw, match):
    with pytest.raises(ConfigError, match=match):
        run_downstream(_cfg(data, **kw))
