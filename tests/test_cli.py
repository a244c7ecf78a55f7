"""The ``bigseer`` command line: help, version, ``models``, ``bench`` and bad input."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

import bigseer
from bigseer import cli
from bigseer.models import PRESETS, TIMM_NAMES


def _bigseer(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bigseer.cli ARGS`` (same code as the installed ``bigseer`` script)."""
    return subprocess.run([sys.executable, "-m", "bigseer.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_subcommand() -> None:
    res = _bigseer("--help")
    assert res.returncode == 0, res.stderr
    for name in ("pretrain", "export", "convert", "plan", "scan", "bench", "models"):
        assert name in res.stdout
    assert set(cli.COMMANDS) >= {"bench", "models"}


def test_version() -> None:
    res = _bigseer("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"bigseer {bigseer.__version__}"


def test_python_dash_m_bigseer_entry() -> None:
    res = subprocess.run([sys.executable, "-m", "bigseer", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == f"bigseer {bigseer.__version__}"


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (a subprocess would re-import torch, which is slow on the shared machine).
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["preset", "stage"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(rows) == list(PRESETS)
    # Values straight from /work/shared/REFERENCE.md section 1.
    assert rows["regnety_256gf"] == ["regnety_256gf", "746/1492/4103/10444", "2,7,17,1", "373/373/373/373",
                                     "1,272,156,138", "regnety_2560"]
    assert rows["seer_10b"][1:5] == ["2020/4040/11110/28280", "2,7,17,1", "1010/1010/1010/1010", "9,323,934,872"]
    assert rows["seer_10b"][5] == "-"
    assert rows["regnety_8gf"][4] == "37,163,068"
    for name, timm_name in TIMM_NAMES.items():
        assert rows[name][5] == timm_name


def test_unknown_subcommand_fails() -> None:
    res = _bigseer("frobnicate")
    assert res.returncode != 0
    assert "frobnicate" in res.stderr


def test_bench_rejects_bad_flags_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--model", "regnety_test"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--model 'regnety_test'" in err and "regnety_800mf" in err and "\n" not in err
    assert cli.main(["bench", "--batch_size", "0"]) == 2
    assert "--batch_size=0" in capsys.readouterr().err


@pytest.mark.numerics
def test_bench_runs_and_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["bench", "--model", "regnety_200mf", "--batch_size", "4", "--image_size", "64",
                   "--steps", "1", "--warmup", "0", "--channels_last", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ") and not line.startswith("| variant")}
    assert list(rows) == ["timm eager", "bigseer eager", "timm channels_last", "bigseer channels_last"]
    assert rows["timm eager"][2] == "1.00x"
    for name, cells in rows.items():
        assert float(cells[0]) > 0, name  # images/s
        assert math.isfinite(float(cells[3])) and math.isfinite(float(cells[5])), name
    # Same weights, same input, same ops: timm's eager trunk matches ours to fp32 rounding, whose scale is
    # bigseer eager's own distance to its float64 run (last column; tests/numerics.py: within 8x of it).
    fp32_scale = float(rows["bigseer eager"][6])
    assert 0 < fp32_scale < float("inf")
    assert float(rows["timm eager"][5]) <= 8 * fp32_scale + 1e-7


def test_per_stage_checkpointing_from_the_command_line_and_a_config_file(tmp_path) -> None:
    """``--checkpointing 0,1,2,1`` (per-stage counts) trains the demo model; the same value from a config file
    does too; a bad value is one line, before any work. (Subprocesses: a run configures the process's logging.)"""
    import yaml

    from bigseer.config_files import load_config_file

    run = ["pretrain", "--max_steps", "1", "--no_export", "--batch_size", "4", "--recipe", "none",
           "--crops", "2x32+2x16"]
    res = _bigseer(*run, "--checkpointing", "0,1,2,1", "--output_dir", str(tmp_path / "flag"))
    assert res.returncode == 0, res.stderr[-2000:]
    saved = yaml.safe_load((tmp_path / "flag" / "config.yaml").read_text())
    assert saved["parallel"]["checkpointing"] == "0,1,2,1"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parallel": {"checkpointing": "0,1,2,1"}}))
    assert load_config_file(str(cfg))["checkpointing"] == "0,1,2,1"
    res = _bigseer(*run, "--config", str(cfg), "--output_dir", str(tmp_path / "file"))
    assert res.returncode == 0, res.stderr[-2000:]
    res = _bigseer(*run, "--checkpointing", "0,x,1,1", "--output_dir", str(tmp_path / "bad"))
    assert res.returncode != 0 and "checkpointing='0,x,1,1' is invalid" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_per_stage_counts_select_the_first_blocks_of_each_stage() -> None:
    from bigseer.models import build_regnet
    from bigseer.parallel.checkpointing import select_blocks

    trunk = build_regnet("regnety_tiny")
    stages = [list(s) for s in trunk.stages()]
    assert [len(s) for s in stages] == [1, 1, 2, 2]
    chosen = select_blocks(trunk, "0,1,2,1")
    assert chosen == [stages[1][0], stages[2][0], stages[2][1], stages[3][0]]
