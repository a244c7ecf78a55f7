"""`bigseer eval` end to end: 2 CPU ranks under `accelerate launch -m bigseer eval`, the single-process warning,
clear errors through examples/finetune.py (a thin wrapper of the same command)."""

import importlib.util
import json
import os
import subprocess
import sys

from safetensors.torch import save_file

from bigseer.downstream.launch_check import single_process_cpu_launch
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.models import build_regnet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "finetune.py")
SMALL = ["--model", "regnety_test", "--train_crop", "32", "--eval_resize", "32", "--eval_crop", "32",
         "--no_progress", "--cpu"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    env.pop("WORLD_SIZE", None)
    return env


def test_two_ranks_under_accelerate_launch(tmp_path):
    data = write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=7, val_per_class=3, size=32)
    out = tmp_path / "out"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", "-m", "bigseer",
           "eval", "lowshot", "--data", data, "--fraction", "0.5", "--epochs", "2", "--batch_size", "4",
           "--lr", "0.05", "--output_dir", str(out), *SMALL]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only the main process prints the JSON
    res = json.loads(lines[0])
    assert res["world_size"] == 2 and res["num_train_images"] == 9  # 3 per class of 7
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    assert all(0 <= h["top1"] <= 100 for h in res["history"])
    assert "top1" in proc.stderr and "runs ONE process" not in proc.stderr
    assert json.loads((out / "results.json").read_text())["final"] == res["final"]


def test_single_process_cpu_launch_warning():
    launched = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert "runs ONE process" in single_process_cpu_launch(1, launched)
    assert single_process_cpu_launch(2, dict(launched, WORLD_SIZE="2")) is None
    assert single_process_cpu_launch(1, {"ACCELERATE_USE_CPU": "True"}) is None  # plain single-process launch
    assert single_process_cpu_launch(1, {}) is None


def _example_main():
    spec = importlib.util.spec_from_file_location("finetune_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_bad_inputs_fail_with_one_line(tmp_path, capsys):
    good = write_colour_folder(str(tmp_path / "good"), num_classes=3, train_per_class=2, val_per_class=1, size=16)
    bad = write_colour_folder(str(tmp_path / "bad"), num_classes=3, train_per_class=2, val_per_class=1, size=16)
    os.rename(os.path.join(bad, "val", "class_2"), os.path.join(bad, "val_class_2_moved"))
    wrong = str(tmp_path / "tiny.safetensors")
    save_file(build_regnet("regnety_tiny").state_dict(), wrong)
    main = _example_main()
    cases = [
        (["--data", bad, *SMALL], "missing class folder(s) ['class_2']"),
        (["--data", good, "--weights", wrong, *SMALL], "first differing key"),
        (["--data", good, "--mode", "lowshot", "--fraction", "0.1", *SMALL], "leaves class 'class_0' empty"),
        (["--data", good, "--weights", str(tmp_path / "nope.safetensors"), *SMALL], "do not exist"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if "error:" in ln]
        assert len(errors) == 1 and message in errors[0], err
        assert "Traceback" not in err
