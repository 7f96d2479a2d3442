"""LiteRT export (export.litert, export.litert_ops, export.load_litert): on-device adaptation in builtins only.

Three small runs are written with ``artifacts.save`` and exported as SavedModels: the sine demo's MLP
(ReLU dense layers, tanh dense warps; momentum, mini-batches of 5 from 10 shots), the Omniglot convnet
(conv + max-pool + fused BatchNorm + ReLU blocks with conv3x3 warps; SGD, mini-batches of 8) and the
few-shot learner (block 1 fixed, per-parameter meta-learned rates, full-batch steps). The LiteRT models are
converted from those SavedModels (the sine one through the CLI). A separate Python process in which
TensorFlow and warpgrad_tf cannot be imported runs every LiteRT model with ``ai_edge_litert`` and NumPy;
its outputs must match the SavedModels' on the same support and query sets.
"""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from export import litert, litert_ops, try_sine
from export.load_litert import load as load_litert
from tests.helpers import assert_one_line_error
from trainers.sine_demo import build_model
from warpgrad_tf import artifacts, learned_lr, serving
from warpgrad_tf.models.fewshot import fewshot_convnet, partition
from warpgrad_tf.models.omniglot import omniglot_convnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT, QUERY, IMAGES_SUPPORT, IMAGES_QUERY = 10, 100, 10, 15
TOL = 1e-4

# Runs with ai_edge_litert and NumPy alone: TensorFlow and warpgrad_tf are made unimportable first.
LITERT_PROCESS = r"""
import json, sys, time
sys.modules["tensorflow"] = None
sys.modules["warpgrad_tf"] = None
import numpy as np
from export.load_litert import load
results = {}
for name, (path, data) in json.loads(sys.argv[1]).items():
    model = load(path, num_threads=1)
    d = np.load(data)
    sx, sy, qx = d["sx"], d["sy"], d["qx"]
    start = time.perf_counter()
    outputs = model.adapt_and_predict(sx, sy, qx)
    seconds = time.perf_counter() - start
    params = model.adapt(sx, sy)
    out = {"outputs": outputs, "infer_adapted": model.infer(qx, params), "infer_initial": model.infer(qx)}
    out.update({"param_" + k: v for k, v in params.items()})
    np.savez(data.replace(".npz", "-litert.npz"), **out)
    results[name] = {"seconds": seconds, "steps": model.steps}
results["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "warpgrad_tf")
                             and sys.modules[m] is not None)
print(json.dumps(results))
"""


def _perturb(warped, role, scale, rng):
    for v in warped.variables(role).values():
        v.assign(v.numpy() + scale * rng.standard_normal(v.shape).astype(np.float32))


def _sine_run(root, rng):
    sine = wg.WarpedModel(build_model(hidden=16, warp_hidden=8, seed=1))
    _perturb(sine, "warp", 0.05, rng)
    artifacts.save(str(root / "sine"), sine, wg.momentum(0.02, beta=0.5), loss="mse", steps=10, batch_size=5,
                   method="warpgrad", training_step=10, task_family="sine")


def _image_runs(root, rng):
    keras.utils.set_random_seed(2)
    omni = wg.WarpedModel(omniglot_convnet(num_classes=5, filters=4, num_blocks=2))
    _perturb(omni, "warp", 0.02, rng)
    artifacts.save(str(root / "omni"), omni, wg.sgd(0.1), loss="softmax_cross_entropy", steps=10, batch_size=8,
                   method="warpgrad", training_step=7, task_family="omniglot")
    keras.utils.set_random_seed(3)
    fewshot = partition(fewshot_convnet(num_classes=5, filters=4, num_blocks=2, image_size=28, channels=1))
    rate = learned_lr.learned_rate(fewshot, 0.05, "per_parameter")
    for v in rate.variables.values():
        v.assign(v.numpy() * rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    artifacts.save(str(root / "fewshot"), fewshot, wg.sgd(0.05), loss="softmax_cross_entropy", steps=10,
                   batch_size=None, method="meta_sgd", training_step=3, task_family="omniglot", learned_rate=rate)


def _data(root, name):
    rng = np.random.default_rng(7)
    if name.startswith("sine"):
        _, _, (sx, sy), (qx, _) = try_sine.sample_task(11, SUPPORT, QUERY)
    else:
        sx = rng.uniform(size=(IMAGES_SUPPORT, 28, 28, 1)).astype(np.float32)
        sy = (np.arange(IMAGES_SUPPORT) % 5).astype(np.int32)
        qx = rng.uniform(size=(IMAGES_QUERY, 28, 28, 1)).astype(np.float32)
    path = str(root / f"{name}.npz")
    np.savez(path, sx=sx, sy=sy, qx=qx)
    return path, (sx, sy, qx)


def _run_litert(root, runs, jobs):
    """Run every LiteRT model of ``jobs`` (``{name: (run, steps, path)}``) in the LiteRT-only process and
    the matching SavedModel here on the same data."""
    data = {name: _data(root, name) for name in jobs}
    feed = {name: (str(jobs[name][2]), data[name][0]) for name in jobs}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", LITERT_PROCESS, json.dumps(feed)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = {}
    for name, (run, steps, _) in jobs.items():
        model = tf.saved_model.load(runs[run][1])
        sx, sy, qx = data[name][1]
        saved[name] = {"outputs": model.adapt_and_predict(sx, sy, qx, steps)["outputs"].numpy(),
                       "params": {k: v.numpy() for k, v in model.adapt(sx, sy, steps).items()}}
    return {"root": root, "runs": runs, "jobs": jobs, "data": data, "saved": saved,
            "report": json.loads(out.stdout.strip().splitlines()[-1]),
            "litert": {name: dict(np.load(data[name][0].replace(".npz", "-litert.npz"))) for name in jobs}}


def _saved_models(root, names):
    return {name: (str(root / name), serving.export(str(root / name), str(root / name / "saved_model"))[0])
            for name in names}


@pytest.fixture(scope="module")
def sine(tmp_path_factory):
    """The sine run exported at 10 steps through the CLI (from its SavedModel), at 100 and at 0 steps."""
    root = tmp_path_factory.mktemp("litert_sine")
    _sine_run(root, np.random.default_rng(0))
    runs = _saved_models(root, ["sine"])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # the CLI's main, in-process (saves a TensorFlow start)
        rc = litert.main([f"--saved_model={runs['sine'][1]}", f"--output={root / 'sine.tflite'}",
                          f"--support_size={SUPPORT}", f"--query_size={QUERY}"])
    assert rc == 0, stdout.getvalue()
    jobs = {"sine": ("sine", 10, root / "sine.tflite")}
    for steps in (100, 0):
        jobs[f"sine_{steps}"] = ("sine", steps, litert.export(
            str(root / f"sine_{steps}.tflite"), saved_model=runs["sine"][1], support_size=SUPPORT, query_size=QUERY,
            steps=steps)[0])
    return dict(_run_litert(root, runs, jobs), cli=stdout.getvalue())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The Omniglot convnet (exported from its run directory) and the few-shot learner (from its SavedModel)."""
    root = tmp_path_factory.mktemp("litert_images")
    _image_runs(root, np.random.default_rng(1))
    runs = _saved_models(root, ["omni", "fewshot"])
    size = dict(support_size=IMAGES_SUPPORT, query_size=IMAGES_QUERY)
    jobs = {"omni": ("omni", 10, litert.export(str(root / "omni.tflite"), root_dir=runs["omni"][0], **size)[0]),
            "fewshot": ("fewshot", 10, litert.export(str(root / "fewshot.tflite"), saved_model=runs["fewshot"][1],
                                                     **size)[0])}
    return _run_litert(root, runs, jobs)


@pytest.mark.parametrize("fixture", ["sine", "images"])
def test_litert_process_imports_neither_tensorflow_nor_warpgrad(request, fixture):
    exported = request.getfixturevalue(fixture)
    assert exported["report"]["imported"] == []
    assert {name: exported["report"][name]["steps"] for name in exported["jobs"]} == {
        name: steps for name, (_, steps, _) in exported["jobs"].items()}


@pytest.mark.parametrize("fixture, name", [("sine", "sine"), ("images", "omni")])
def test_adapt_and_predict_equals_saved_model_after_10_steps(request, fixture, name):
    exported = request.getfixturevalue(fixture)
    lite, saved = exported["litert"][name], exported["saved"][name]
    diff = float(np.max(np.abs(lite["outputs"] - saved["outputs"])))
    print(f"{name}, 10 steps: max |LiteRT - SavedModel| = {diff:.2e}")
    assert diff <= TOL
    for key, value in saved["params"].items():  # adapt returns the SavedModel's parameters, by its names
        assert np.max(np.abs(lite["param_" + key] - value)) <= TOL, key
    # adaptation moved the predictions (by far more than the tolerance)
    assert np.max(np.abs(lite["outputs"] - lite["infer_initial"])) > 100 * TOL


def test_sine_after_100_and_0_steps(sine):
    lite, saved = sine["litert"]["sine_100"], sine["saved"]["sine_100"]
    diff = float(np.max(np.abs(lite["outputs"] - saved["outputs"])))
    print(f"sine, 100 steps: max |LiteRT - SavedModel| = {diff:.2e}")
    assert diff <= 1e-3
    assert np.max(np.abs(lite["outputs"] - sine["litert"]["sine"]["outputs"])) > 1e-2  # K changes predictions
    unadapted = sine["litert"]["sine_0"]
    np.testing.assert_allclose(unadapted["outputs"], unadapted["infer_initial"], atol=1e-6)  # K = 0: θ0's
    np.testing.assert_allclose(unadapted["outputs"], sine["saved"]["sine_0"]["outputs"], atol=TOL)


def test_learned_rates_are_the_saved_models(images):
    """The few-shot learner adapts with its per-parameter meta-learned rates (not the rule's α) in both."""
    lite, saved = images["litert"]["fewshot"], images["saved"]["fewshot"]
    assert np.max(np.abs(lite["outputs"] - saved["outputs"])) <= TOL
    meta = load_litert(str(images["jobs"]["fewshot"][2])).metadata
    assert meta["learned_rate"]["granularity"] == "per_parameter" and meta["learned_rate"]["min"] < 0.05 * 0.6


@pytest.mark.parametrize("fixture", ["sine", "images"])
def test_infer_composes_with_adapt(request, fixture):
    exported = request.getfixturevalue(fixture)
    for name, results in exported["litert"].items():
        np.testing.assert_allclose(results["infer_adapted"], results["outputs"], atol=1e-6, err_msg=name)


def test_wrong_inputs_are_errors_naming_the_input(sine, images):
    model = load_litert(str(sine["jobs"]["sine"][2]))
    (sx, sy, qx) = sine["data"]["sine"][1]
    with pytest.raises(ValueError, match=r"support_x must have shape \[10, 1\] \(exported for support_size=10\); "
                                         r"got \[5, 1\]"):
        model.adapt_and_predict(sx[:5], sy, qx)
    with pytest.raises(ValueError, match=r"query_x must have shape \[100, 1\]"):
        model.adapt_and_predict(sx, sy, qx[:, :, None])
    with pytest.raises(ValueError, match="x must have shape"):
        model.infer(qx[:7])
    with pytest.raises(ValueError, match="support_y holds non-finite values"):
        model.adapt(sx, np.full_like(sy, np.nan))
    omni = load_litert(str(images["jobs"]["omni"][2]))
    (ix, iy, _) = images["data"]["omni"][1]
    with pytest.raises(ValueError, match=r"support_y holds labels outside \[0, 5\)"):
        omni.adapt(ix, iy + 5)
    with pytest.raises(ValueError, match="support_y must hold integer class labels"):
        omni.adapt(ix, iy.astype(np.float32))


@pytest.mark.parametrize("fixture", ["sine", "images"])
def test_converted_models_hold_builtin_ops_only(request, fixture):
    for name, (_, _, path) in request.getfixturevalue(fixture)["jobs"].items():
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            tf.lite.experimental.Analyzer.analyze(model_path=str(path))
        ops = set(re.findall(r"Op#\d+ (\w+)", text.getvalue()))
        assert {"WHILE", "FULLY_CONNECTED" if name.startswith("sine") else "CONV_2D"} <= ops
        assert all(re.fullmatch(r"[A-Z0-9_]+", op) for op in ops), sorted(ops)  # no Flex / custom op


def test_cli_summary_and_metadata(sine):
    assert "LiteRT builtins only" in sine["cli"] and "10 steps of momentum" in sine["cli"]
    meta = load_litert(str(sine["jobs"]["sine"][2])).metadata
    assert (meta["support_size"], meta["query_size"], meta["steps"], meta["batch_size"]) == (SUPPORT, QUERY, 10, 5)
    assert np.asarray(meta["minibatch_indices"]).shape == (10, 5)


def test_try_sine_prints_litert_beside_saved_model(sine):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try_sine.main([f"--saved_model={sine['runs']['sine'][1]}", f"--litert={sine['jobs']['sine'][2]}"])
    line = out.getvalue().strip().splitlines()[-1]
    lite, saved = (float(v) for v in re.findall(r"query MSE (\S+) \(SavedModel (\S+)\)", line)[0])
    assert abs(lite - saved) <= 1e-3, line


def test_cli_errors_are_one_line(sine, tmp_path, capsys):
    rc = litert.main([f"--saved_model={tmp_path}", f"--output={tmp_path / 'x.tflite'}", "--support_size=3",
                      "--query_size=3"])
    assert_one_line_error(subprocess.CompletedProcess([], rc, "", capsys.readouterr().err), "holds no SavedModel")
    rc = litert.main([f"--root_dir={sine['runs']['sine'][0]}", f"--output={tmp_path / 'x.tflite'}",
                      "--support_size=0", "--query_size=3"])
    assert_one_line_error(subprocess.CompletedProcess([], rc, "", capsys.readouterr().err),
                          "support_size must be >= 1; got 0")


def test_saved_model_alone_converts_after_its_run_is_deleted(tmp_path, capsys):
    """A SavedModel carries its architecture (assets.extra): moved away from its run, with the run deleted, it
    converts to LiteRT alone and adapts to the SavedModel's predictions. One of an older version (no
    assets.extra) moved away from its run is a one-line error asking for --root_dir."""
    _sine_run(tmp_path, np.random.default_rng(5))
    exported = serving.export(str(tmp_path / "sine"), str(tmp_path / "sine" / "saved_model"))[0]
    assert os.path.isfile(os.path.join(exported, artifacts.ASSETS_DIR, artifacts.SPEC_FILE))
    moved = str(tmp_path / "elsewhere" / "sm")
    shutil.copytree(exported, str(tmp_path / "old"), ignore=shutil.ignore_patterns(artifacts.ASSETS_DIR))
    shutil.move(exported, moved)
    shutil.rmtree(tmp_path / "sine")
    output = str(tmp_path / "moved.tflite")
    rc = litert.main([f"--saved_model={moved}", f"--output={output}", f"--support_size={SUPPORT}",
                      f"--query_size={QUERY}"])
    assert rc == 0, capsys.readouterr().err
    _, _, (sx, sy), (qx, _) = try_sine.sample_task(12, SUPPORT, QUERY)
    saved = tf.saved_model.load(moved)  # held: a loaded object's functions need it alive
    expected = saved.adapt_and_predict(sx, sy, qx, 10)["outputs"].numpy()
    lite = load_litert(output, num_threads=1)
    outputs = lite.adapt_and_predict(sx, sy, qx)
    assert np.max(np.abs(outputs - expected)) <= TOL
    assert np.max(np.abs(outputs - lite.infer(qx))) > 100 * TOL  # it adapted
    rc = litert.main([f"--saved_model={tmp_path / 'old'}", f"--output={tmp_path / 'old.tflite'}",
                      f"--support_size={SUPPORT}", f"--query_size={QUERY}"])
    err = capsys.readouterr().err
    assert_one_line_error(subprocess.CompletedProcess([], rc, "", err), "carries no model architecture")
    assert "pass its run directory as --root_dir" in err


def test_unsupported_op_is_a_one_line_error_naming_op_and_layer():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, strides=2, name="strided")(inp)  # a filter gradient litert_ops does not cover
    warped = wg.WarpedModel(keras.Model(inp, keras.layers.Dense(1, name="head")(keras.layers.Flatten()(x))))
    rule = wg.sgd(0.1)
    spec = artifacts.AdaptationSpec(rule="sgd", rule_hyperparameters=dict(rule.hyperparameters), loss="mse", steps=1,
                                    batch_size=None, method="warpgrad", training_step=0, input_shape=[8, 8, 1],
                                    num_outputs=1, roles=warped.role_map())
    with pytest.raises(ValueError) as e:
        litert.LiteRTExporter(warped, rule, spec, support_size=2, query_size=2).convert()
    message = str(e.value)
    assert "\n" not in message
    assert "Conv2DBackpropFilter (layer strided)" in message


def test_builtin_gradients_equal_tensorflows():
    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((2, 7, 7, 3)), tf.float32)
    ties = tf.constant(np.round(rng.standard_normal((2, 7, 7, 3))), tf.float32)  # many equal maxima
    cases = [
        (lambda v: litert_ops.relu(v), tf.nn.relu, ties),  # exact zeros included
        (lambda v: litert_ops.max_pool_2d(v, (2, 2)), lambda v: tf.nn.max_pool2d(v, 2, 2, "VALID"), ties),
        (lambda v: litert_ops.max_pool_2d(v, (3, 3)), lambda v: tf.nn.max_pool2d(v, 3, 3, "VALID"), x),
    ]
    for size, padding in ((3, "SAME"), (2, "SAME"), (3, "VALID")):
        kernel = tf.constant(rng.standard_normal((size, size, 3, 4)), tf.float32)
        cases.append((lambda v, k=kernel, p=padding: litert_ops.conv2d(v, k, p),
                      lambda v, k=kernel, p=padding: tf.nn.conv2d(v, k, 1, p), x))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(kernel)
            ours, theirs = litert_ops.conv2d(x, kernel, padding), tf.nn.conv2d(x, kernel, 1, padding)
            weights = tf.constant(rng.standard_normal(ours.shape), tf.float32)
            loss_ours, loss_theirs = tf.reduce_sum(weights * ours), tf.reduce_sum(weights * theirs)
        np.testing.assert_allclose(tape.gradient(loss_ours, kernel), tape.gradient(loss_theirs, kernel), atol=1e-4)
    for ours, theirs, value in cases:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(value)
            y_ours, y_theirs = ours(value), theirs(value)
            weights = tf.constant(rng.standard_normal(y_ours.shape), tf.float32)
            loss_ours, loss_theirs = tf.reduce_sum(weights * y_ours), tf.reduce_sum(weights * y_theirs)
        np.testing.assert_array_equal(y_ours, y_theirs)
        np.testing.assert_allclose(tape.gradient(loss_ours, value), tape.gradient(loss_theirs, value), atol=1e-5)


def test_builtin_model_keeps_values_and_swaps_layers():
    keras.utils.set_random_seed(4)
    model = omniglot_convnet(num_classes=3, filters=2, num_blocks=2, warp="relu")
    clone = litert_ops.builtin_model(model)
    kinds = {type(layer) for layer in clone.layers}
    assert {litert_ops.Conv2D, litert_ops.MaxPooling2D, litert_ops.ReLU} <= kinds
    assert not any(type(layer).__name__ == "FusedBatchNormalization" for layer in clone.layers)
    assert clone.get_layer("warp1").output_activation is litert_ops.relu  # a nested activation, swapped
    assert [v.path for v in clone.variables] == [v.path for v in model.variables]
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(clone(x, training=True), model(x, training=True), atol=1e-5)
