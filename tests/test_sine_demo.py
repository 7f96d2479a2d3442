"""The embedded demo trainer: outputs, resume, bad configuration."""

import json
import os
import subprocess
import sys

import gin
import pytest

from trainers import sine_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_train_eval_writes_table_plot_logs_model_and_resumes(tmp_path):
    root = str(tmp_path / "run")
    gin.bind_parameter("warp_method.meta_steps", 2)
    gin.bind_parameter("warp_method.meta_batch_size", 2)
    table = sine_demo.train_eval(root, inner_steps=3, eval_tasks=4, methods=("sgd", "warp"))
    assert set(table) == {"sgd", "warp"}
    results = json.load(open(os.path.join(root, "results.json")))
    assert len(results["methods"]["warp"]["curve"]) == 4
    assert os.path.getsize(os.path.join(root, "curves.png")) > 10_000
    assert any(f.startswith("events") for f in os.listdir(os.path.join(root, "train")))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(root, "eval")))
    spec = json.load(open(os.path.join(root, "model", "warpgrad.json")))
    assert spec["training_step"] == 2 and spec["rule"] == "sgd"
    # The warps moved away from their initial values, so meta-training did something.
    assert table["warp"]["final_mse"] != table["sgd"]["final_mse"]

    # Resume: a longer budget continues from the step-2 checkpoint rather than starting over.
    gin.bind_parameter("warp_method.meta_steps", 3)
    sine_demo.train_eval(root, inner_steps=3, eval_tasks=2, methods=("warp",))
    ckpts = os.listdir(os.path.join(root, "warp", "checkpoints"))
    assert any("ckpt-3" in c for c in ckpts) and any("ckpt-2" in c for c in ckpts)


def test_bad_configuration_is_one_line_naming_the_binding(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.sine_demo", f"--root_dir={tmp_path}",
         "--gin_param=train_eval.methods=['sgd', 'fancy']"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Unknown method(s) ['fancy']" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_meta_learner_rows_train_and_report(tmp_path):
    assert {"leap", "reptile", "maml", "warp_leap"} <= set(sine_demo.train_eval.__wrapped__.__defaults__[0])
    gin.bind_parameter("init_method.meta_steps", 2)
    gin.bind_parameter("init_method.meta_batch_size", 2)
    table = sine_demo.train_eval(str(tmp_path), inner_steps=3, eval_tasks=2, methods=("sgd", "leap", "warp_leap"))
    assert set(table) == {"sgd", "leap", "warp_leap"}
    assert table["leap"]["final_mse"] != table["sgd"]["final_mse"]  # θ0 moved
    assert table["warp_leap"]["final_mse"] != table["leap"]["final_mse"]  # φ moved too
