"""The embedded demo trainer: outputs, resume, bad configuration."""

import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest

import warpgrad_tf as wg
from trainers import common, sine_demo
from warpgrad_tf import algorithms

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
    assert {"leap", "reptile", "maml", "warp_leap"} <= set(sine_demo.train_eval.__defaults__[0])
    gin.bind_parameter("init_method.meta_steps", 2)
    gin.bind_parameter("init_method.meta_batch_size", 2)
    table = sine_demo.train_eval(str(tmp_path), inner_steps=3, eval_tasks=2, methods=("sgd", "leap", "warp_leap"))
    assert set(table) == {"sgd", "leap", "warp_leap"}
    assert table["leap"]["final_mse"] != table["sgd"]["final_mse"]  # θ0 moved
    assert table["warp_leap"]["final_mse"] != table["leap"]["final_mse"]  # φ moved too


def test_warp_method_is_the_library_warpgrad_row_under_algorithm_1(tmp_path):
    """Two meta-steps of the demo's ``warp`` method move φ exactly as ``algorithms.online_step`` with the
    methods table's ``"warpgrad"`` row and the same Adam does on the same meta-batches; θ0 stays fixed."""
    gin.bind_parameter("warp_method.meta_steps", 2)
    gin.bind_parameter("warp_method.meta_batch_size", 2)
    family, rule = wg.tasks.SineTaskFamily(shots=10, query=20), wg.sgd(0.01)
    problem = sine_demo.Problem(family, wg.WarpedModel(sine_demo.build_model()), rule, 3, seed=0)
    trained = sine_demo.warp_method(problem, common.SummaryWriters(str(tmp_path)), str(tmp_path))

    reference = wg.WarpedModel(sine_demo.build_model())  # the same seeded initialisation
    initial_warp = reference.values("warp")
    optimizer = keras.optimizers.Adam(5e-3)
    optimizer.build(list(reference.warp_variables.values()))
    learner = algorithms.methods.meta_learner_for("warpgrad", rule, wg.losses.mse, 3)
    step = algorithms.online_step(reference, learner, algorithms.meta_optimizers(warp=optimizer))
    for k in range(2):
        seeds = problem.train_seeds(k, 2)
        step(family.sample_batch(seeds), seeds)
    for name, value in reference.values("warp").items():
        np.testing.assert_allclose(trained.warp[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    assert any(not np.allclose(trained.warp[n], v) for n, v in initial_warp.items())
    for name, value in reference.values("task").items():
        np.testing.assert_array_equal(trained.task[name], value, err_msg=name)
