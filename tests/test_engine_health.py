"""Health through the engine: signals in every logged step, the collapse detector quiet on a healthy run and
firing on a collapsed one; with --on_collapse stop the run ends non-zero with `latest` at the last
checkpoint from before the collapse; the data recipe leaves what the user chose alone."""

from __future__ import annotations

import json
from pathlib import Path


from bigseer import checkpoint as ckpt
from bigseer.config import PretrainConfig
from bigseer.engine import pretrain

TINY = dict(model="regnety_test", crops="2x32+2x16", head_dims=(32,), embed_dim=16, num_prototypes=32, batch_size=8,
            seed=4, export=False, collapse_patience=3)


def test_healthy_run_logs_signals_and_stays_quiet(tmp_path: Path, capsys) -> None:
    pretrain(PretrainConfig(**TINY, max_steps=8, output_dir=str(tmp_path)))
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        h = r["health"]
        assert set(h) >= {"loss_ratio", "code_entropy", "pred_entropy", "prototypes_used", "embed_std"}
        assert abs(h["loss_ratio"] * h["log_k"] - r["loss"]) < 1e-4 * r["loss"]
    err = capsys.readouterr().err
    assert "collapsed" not in err
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert any("ln K" in ln and "protos used" in ln for ln in err.splitlines() if " step " in ln)


def _collapse_after(monkeypatch, step: int) -> None:
    """From forward ``step + 1`` on, every image gets the same embedding (SwAV's trivial fixed point)."""
    from bigseer.ssl.head import SwAVHead

    real = SwAVHead.embed
    calls = {"n": 0}

    def embed(self, x):
        calls["n"] += 1
        z = real(self, x)
        return z if calls["n"] <= step else (z * 0 + z.mean(0, keepdim=True)).detach() + 0 * z

    monkeypatch.setattr(SwAVHead, "embed", embed)


def test_collapse_warns_once_naming_causes(tmp_path: Path, capsys, monkeypatch) -> None:
    _collapse_after(monkeypatch, 4)
    pretrain(PretrainConfig(**TINY, max_steps=12, output_dir=str(tmp_path)))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "SwAV collapsed" in ln]
    assert len(lines) == 1 and "likely causes" in lines[0] and "--" in lines[0] and "\n" not in lines[0]


def test_on_collapse_stop_exits_non_zero_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch,
                                                                            capsys) -> None:
    from bigseer import cli

    _collapse_after(monkeypatch, 4)
    args = ["pretrain", "--model", "regnety_test", "--crops", "2x32+2x16", "--head_dims", "32", "--embed_dim", "16",
            "--num_prototypes", "32", "--batch_size", "8", "--no_export", "--collapse_patience", "3",
            "--on_collapse", "stop", "--max_steps", "20", "--checkpoint_every", "2", "--keep_last", "10",
            "--output_dir", str(tmp_path)]
    assert cli.main(args) == 3
    assert "SwAV collapsed" in capsys.readouterr().err
    latest = ckpt.find_latest(tmp_path)
    assert latest is not None and int(latest.name.split("_")[1]) <= 4  # from before the collapse
    assert ckpt.read_meta(latest)["step"] <= 4
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*")]  # nothing deleted


def test_recipe_auto_keeps_what_the_user_set(tmp_path: Path) -> None:
    from bigseer.run import apply_data_recipe

    cfg, side = apply_data_recipe(PretrainConfig(data="builtin:64", crops="2x48+2x24", num_prototypes=48))
    assert side is not None and cfg.crops == "2x48+2x24" and cfg.num_prototypes == 48
    assert cfg.jitter_strength != PretrainConfig().jitter_strength  # chosen from the data
    none, _ = apply_data_recipe(PretrainConfig(data="builtin:64", recipe="none"))
    assert none == PretrainConfig(data="builtin:64", recipe="none")
