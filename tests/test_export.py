"""Adaptation-only SavedModel export (warpgrad_tf.serving, export/): one test per signature and claim.

Two small trained-looking runs are written with ``artifacts.save``: a sine MLP with dense warps (momentum,
mini-batches of 5 from 10 shots, exported through the CLI with ``--checkpoint``) and an Omniglot-shaped
conv net (BatchNorm + ReLU + max-pool blocks, conv warps, a frozen layer, 20 classes, SGD). A separate
Python process that imports only TensorFlow (and NumPy) loads both SavedModels; its outputs must match
in-memory adaptation with the library (``warpgrad_tf.adapt`` + ``WarpedModel.apply``) to 1e-5. Two more
processes load the Omniglot export with :mod:`export.load` and feed it a wrong shape: quiet by default,
every TensorFlow line back with ``WARPGRAD_VERBOSE=1``.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from export import saved_model as saved_model_cli
from export.load import load as load_export
from warpgrad_tf import artifacts, run_checkpoints, serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
TOL = 1e-5
SINE_STEPS, OMNI_STEPS, OMNI_CLASSES = 5, 3, 20


def _sine_model():
    keras.utils.set_random_seed(1)
    inp = keras.Input((1,))
    h = keras.layers.Dense(32, activation="relu", name="dense_0")(inp)
    h = wg.WarpBlock("dense", num_layers=2, hidden_units=16, activation="tanh", residual=True, name="warp_0")(h)
    h = keras.layers.Dense(32, activation="relu", name="dense_1")(h)
    h = wg.WarpBlock("dense", name="warp_1")(h)
    return wg.WarpedModel(keras.Model(inp, keras.layers.Dense(1, name="head")(h), name="sine_learner"))


def _omniglot_model():
    keras.utils.set_random_seed(2)
    x = inp = keras.Input((28, 28, 1))
    for i in range(2):
        x = keras.layers.Conv2D(8, 3, padding="same", name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
        x = wg.layers.MaxPooling2D(2, name=f"pool_{i}")(x)  # the Omniglot learner's (custom second derivative)
        x = wg.WarpBlock("conv", name=f"warp_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(OMNI_CLASSES, name="head")(x)
    return wg.WarpedModel(keras.Model(inp, out, name="omniglot_learner"), frozen=["conv_0"])


def _perturb(warped, role, scale, seed):
    rng = np.random.default_rng(seed)
    for v in warped.variables(role).values():
        v.assign(v.numpy() + scale * rng.standard_normal(v.shape).astype(np.float32))


def _reference(warped, rule, loss_fn, batch_size, seed=0, training=True):
    """In-memory adaptation with the library, from the warped model's current values."""
    task0, warp = warped.values("task"), warped.values("warp")
    frozen, state = warped.values("frozen"), warped.values("state")

    @tf.function
    def adapt_and_predict(sx, sy, qx, steps):
        learner = wg.inner_loop(rule, loss_fn, steps, frozen=frozen, training=training)
        r = wg.adapt(warped, task0, warp, learner, wg.minibatches(sx, sy, batch_size, seed), state=state)
        return warped.apply(r.task, warp, qx, frozen=frozen, state=r.state, training=training)[0], r.task

    return adapt_and_predict


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    # Sine: saved, then "trained further" (task and warp moved) and checkpointed the trainers' way; the
    # CLI exports the checkpoint's weights.
    sine = _sine_model()
    sine_rule = wg.momentum(0.02, beta=0.5)
    artifacts.save(str(root / "sine"), sine, sine_rule, loss="mse", steps=SINE_STEPS, batch_size=5,
                   method="warpgrad", training_step=10, task_family="sine")
    _perturb(sine, "task", 0.05, 0)
    _perturb(sine, "warp", 0.05, 1)
    tf.train.Checkpoint(step=tf.Variable(42, dtype=tf.int64), task=list(sine.variables("task").values()),
                        warp=list(sine.variables("warp").values())).save(str(root / "sine" / "checkpoints" / "ckpt"))
    cli_stdout = io.StringIO()
    with contextlib.redirect_stdout(cli_stdout):  # the CLI's main, in-process (saves a TensorFlow start)
        rc = saved_model_cli.main([f"--root_dir={root / 'sine'}", f"--output={root / 'sine_sm'}",
                                   "--checkpoint=latest"])
    assert rc == 0

    omni = _omniglot_model()
    omni_rule = wg.sgd(0.1)
    _perturb(omni, "warp", 0.02, 2)  # warps away from the identity, like meta-learned ones
    artifacts.save(str(root / "omni"), omni, omni_rule, loss="softmax_cross_entropy", steps=OMNI_STEPS,
                   batch_size=10, method="warpgrad", training_step=7, task_family="omniglot")
    omni_path, omni_description = serving.export(str(root / "omni"), str(root / "omni_sm"))

    task = wg.tasks.SineTaskFamily(shots=10, query=20).sample(123)
    rng = np.random.default_rng(3)
    data = {
        "sine": (task.train_x, task.train_y, task.test_x),
        "omni": (rng.uniform(size=(20, 28, 28, 1)).astype(np.float32),
                 rng.permutation(OMNI_CLASSES).astype(np.int32),
                 rng.uniform(size=(15, 28, 28, 1)).astype(np.float32)),
    }
    refs = {"sine": _reference(sine, sine_rule, wg.losses.mse, 5),
            "omni": _reference(omni, omni_rule, wg.losses.softmax_cross_entropy, 10)}
    steps = {"sine": [0, SINE_STEPS], "omni": [0, OMNI_STEPS]}
    expected = {name: {k: refs[name](*data[name], tf.constant(k))[0].numpy() for k in steps[name]}
                for name in data}
    expected["sine"]["init"] = sine.apply(sine.values("task"), sine.values("warp"), task.test_x, training=True)[0]
    expected["omni"]["init"] = omni.apply(omni.values("task"), omni.values("warp"), data["omni"][2],
                                          training=True)[0]

    return {"root": root, "dirs": {"sine": str(root / "sine_sm"), "omni": omni_path}, "data": data,
            "steps": steps, "expected": expected, "cli_stdout": cli_stdout.getvalue(),
            "omni_description": omni_description,
            "models": {"sine": sine, "omni": omni}}


FRESH_PROCESS = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
from export.load import load

args = json.loads(sys.argv[1])
results = {}
for name, spec in args["exports"].items():
    d = np.load(spec["data"])
    sx, sy, qx = d["support_x"], d["support_y"], d["query_x"]
    helper = load(spec["dir"])  # export/load.py: TensorFlow only
    sig = helper.saved_model.signatures
    for k in spec["steps"]:
        s = tf.constant(k, tf.int32)
        results[f"{name}/signature/{k}"] = sig["adapt_and_predict"](
            support_x=tf.constant(sx), support_y=tf.constant(sy), query_x=tf.constant(qx), steps=s)["outputs"]
        results[f"{name}/helper/{k}"] = helper.adapt_and_predict(sx, sy, qx, steps=k)
        params = sig["adapt"](support_x=tf.constant(sx), support_y=tf.constant(sy), steps=s)
        results[f"{name}/adapt_then_predict/{k}"] = sig["predict"](x=tf.constant(qx), **params)["outputs"]
        for p, v in params.items():
            results[f"{name}/params/{k}/{p}"] = v
    results[f"{name}/helper/default"] = helper.adapt_and_predict(sx, sy, qx)
    results[f"{name}/predict_init"] = helper.predict(qx)
    meta = {key: v.numpy() for key, v in sig["metadata"]().items()}
    meta = {key: v.tolist() if hasattr(v, "tolist") else v for key, v in meta.items()}
    meta = {key: v.decode() if isinstance(v, bytes) else v for key, v in meta.items()}
    meta["parameter_names"] = [v.decode() for v in meta["parameter_names"]]
    meta["parameter_paths"] = [v.decode() for v in meta["parameter_paths"]]
    with open(spec["meta_out"], "w") as f:
        json.dump(meta, f)
assert "warpgrad_tf" not in sys.modules, "the SavedModel must load without warpgrad_tf"
np.savez(args["out"], **{k: np.asarray(v) for k, v in results.items()})
print("keras imported:", "keras" in sys.modules)
"""


REJECTED = r"""
import sys
import numpy as np
from export.load import load

model = load(sys.argv[1])
try:
    model.adapt(np.zeros((2, 28, 28), np.float32), np.zeros(2, np.int32), 1)
except Exception as e:
    print(type(e).__name__, e)
"""

#: Lines a load and a rejected input of an Omniglot export print unless export.load holds them back.
LOAD_NOISE = ("with ops with unsaved custom gradients", "Local rendezvous is aborting")


def _saved_model_cli_commands(runs):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    sx, sy, qx = runs["data"]["sine"]
    exprs = f"support_x={sx.tolist()};support_y={sy.tolist()};query_x={qx.tolist()};steps={SINE_STEPS}"
    return {"show": [cli, "show", "--dir", runs["dirs"]["omni"], "--all"],
            # docs/deploy.md's `saved_model_cli run` example, on the sine export.
            "run": [cli, "run", "--dir", runs["dirs"]["sine"], "--tag_set", "serve", "--signature_def",
                    "adapt_and_predict", "--input_exprs", exprs]}


@pytest.fixture(scope="module")
def fresh(runs):
    """Run the TF-only script and the two saved_model_cli commands (concurrently: each starts TensorFlow)."""
    root = runs["root"]
    exports = {}
    for name, (sx, sy, qx) in runs["data"].items():
        path = str(root / f"{name}_data.npz")
        np.savez(path, support_x=sx, support_y=sy, query_x=qx)
        exports[name] = {"dir": runs["dirs"][name], "data": path, "steps": runs["steps"][name],
                         "meta_out": str(root / f"{name}_meta.json")}
    args = {"exports": exports, "out": str(root / "fresh.npz")}
    commands = {"fresh": [sys.executable, "-c", FRESH_PROCESS, json.dumps(args)], **_saved_model_cli_commands(runs),
                "quiet": [sys.executable, "-c", REJECTED, runs["dirs"]["omni"]],
                "loud": [sys.executable, "-c", REJECTED, runs["dirs"]["omni"]]}
    # export.load on its own (no TF_CPP_MIN_LOG_LEVEL set): quiet, and with WARPGRAD_VERBOSE=1 everything back.
    plain = {k: v for k, v in ENV.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "WARPGRAD_VERBOSE")}
    envs = {"quiet": plain, "loud": dict(plain, WARPGRAD_VERBOSE="1")}
    procs = {k: subprocess.Popen(c, cwd=str(root), env=envs.get(k, ENV), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, c in commands.items()}
    done = {k: (p.communicate(timeout=300), p.returncode) for k, p in procs.items()}
    (_, err), rc = done["fresh"]
    assert rc == 0, err[-3000:]
    results = dict(np.load(args["out"]))
    meta = {name: json.load(open(e["meta_out"])) for name, e in exports.items()}
    return results, meta, {k: done[k] for k in ("show", "run", "quiet", "loud", "fresh")}


# ---------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("name", ["sine", "omni"])
def test_adapt_and_predict_in_fresh_process_matches_in_memory(runs, fresh, name):
    results, _, _ = fresh
    for k in runs["steps"][name]:
        want = runs["expected"][name][k]
        for how in ("signature", "helper", "adapt_then_predict"):
            got = results[f"{name}/{how}/{k}"]
            assert got.shape == want.shape
            diff = float(np.max(np.abs(got - want)))
            assert diff <= TOL, f"{name} {how} steps={k}: max abs diff {diff}"
    default = runs["steps"][name][-1]  # the spec's default steps
    np.testing.assert_allclose(results[f"{name}/helper/default"], runs["expected"][name][default], atol=TOL)
    # Adaptation actually changed the predictions (the test would catch an export that ignores steps).
    assert np.max(np.abs(runs["expected"][name][default] - runs["expected"][name][0])) > 1e-3


@pytest.mark.parametrize("name", ["sine", "omni"])
def test_steps_zero_returns_initialisation(runs, fresh, name):
    results, meta, _ = fresh
    init = np.asarray(runs["expected"][name]["init"])
    np.testing.assert_allclose(results[f"{name}/signature/0"], init, atol=TOL)
    np.testing.assert_allclose(results[f"{name}/predict_init"], init, atol=TOL)
    warped = runs["models"][name]
    for sig_name, path in zip(meta[name]["parameter_names"], meta[name]["parameter_paths"]):
        np.testing.assert_array_equal(results[f"{name}/params/0/{sig_name}"], warped.values("task")[path])


def test_cli_exports_checkpoint_and_metadata(runs, fresh):
    _, meta, _ = fresh
    assert "Exported sine" in runs["cli_stdout"]
    sine = meta["sine"]
    assert sine["training_step"] == 42  # from the checkpoint, not the spec's 10
    assert (sine["rule"], sine["steps"], sine["batch_size"]) == ("momentum", 5, 5)
    assert sine["learning_rate"] == pytest.approx(0.02)
    assert json.loads(sine["rule_hyperparameters"]) == {"learning_rate": 0.02, "beta": 0.5, "nesterov": False}
    assert sine["input_shape"] == [1] and sine["num_outputs"] == 1 and sine["label_dtype"] == "float32"
    assert (sine["method"], sine["version"], sine["training"]) == ("warpgrad", wg.__version__, True)
    assert dict(zip(sine["parameter_names"], sine["parameter_paths"]))["dense_0__kernel"] == "dense_0/kernel"
    omni = meta["omni"]
    assert omni["input_shape"] == [28, 28, 1] and omni["num_outputs"] == OMNI_CLASSES
    assert (omni["loss"], omni["label_dtype"], omni["rule"], omni["training_step"]) == (
        "softmax_cross_entropy", "int32", "sgd", 7)
    assert json.loads(omni["spec_json"]) == json.loads(json.dumps(runs["omni_description"]))
    assert not any(p.startswith(("conv_0/", "warp_")) for p in omni["parameter_paths"])  # frozen and warps


def test_saved_model_cli_show_and_run(runs, fresh):
    (show, show_err), rc = fresh[2]["show"]
    assert rc == 0, show_err[-2000:]
    listed = set(re.findall(r"signature_def\['(\w+)'\]", show))
    assert {"adapt", "predict", "adapt_and_predict", "metadata"} <= listed
    for arg in ("support_x", "support_y", "query_x", "steps", "head__kernel"):
        assert f"inputs['{arg}']" in show
    (run, run_err), rc = fresh[2]["run"]
    assert rc == 0, run_err[-2000:]
    printed = run.split("Result for output key outputs:")[1]
    got = np.array([float(v) for v in re.findall(r"-?\d+\.\d*(?:e[-+]\d+)?", printed)])
    np.testing.assert_allclose(got, runs["expected"]["sine"][SINE_STEPS].ravel(), atol=1e-4)


def test_saved_model_cli_shows_the_declared_contract(runs, fresh):
    (show, _), _ = fresh[2]["show"]
    ours = {block.split("'")[0]: block for block in show.split("signature_def['")[1:] if not block.startswith("__")}
    assert set(ours) == {"adapt", "predict", "adapt_and_predict", "metadata", "serving_default"}
    assert not [name for name, block in ours.items() if "unknown_rank" in block]  # TF's init op aside
    adapt = ours["adapt_and_predict"]
    declared = {name: (dtype, shape) for name, dtype, shape in re.findall(
        r"inputs\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))", adapt)}
    assert declared == {"support_x": ("DT_FLOAT", "(-1, 28, 28, 1)"), "query_x": ("DT_FLOAT", "(-1, 28, 28, 1)"),
                        "support_y": ("DT_INT32", "(-1)"), "steps": ("DT_INT32", "()")}, adapt
    kernel = next(v for p, v in runs["models"]["omni"].values("task").items() if p.endswith("head/kernel"))
    shape = re.escape(str(tuple(kernel.shape)))
    assert re.search(rf"inputs\['head__kernel'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: {shape}", show), show


def test_loading_and_a_rejected_input_are_quiet_unless_verbose(fresh):
    (out, err), rc = fresh[2]["quiet"]
    assert rc == 0, err[-2000:]
    assert out.strip() == "InvalidArgumentError support_x must have shape [n, 28, 28, 1] (rank 4); got shape " \
                          "[2, 28, 28]", out
    assert err == "", err[-2000:]  # no start-up line, no absl warning, no C++ INFO line
    (_, fresh_err), _ = fresh[2]["fresh"]  # TensorFlow imported first, TF_CPP_MIN_LOG_LEVEL=2: load still quiet
    assert not any(n in fresh_err for n in LOAD_NOISE), fresh_err[-2000:]
    (out, err), rc = fresh[2]["loud"]
    assert rc == 0 and "support_x must have shape" in out, err[-2000:]
    # The switch brings TensorFlow's own lines back: those of loading and of the rejected input (which start-up
    # lines come on top depends on the machine's CPU and drivers, so none is named here).
    for line in LOAD_NOISE:
        assert line in err, (line, err[-2000:])


# ---------------------------------------------------------------------------------------- declared specs
def test_signatures_declare_rank_sizes_and_label_dtype(runs, loaded):
    """The loaded signatures carry the contract: rank, image / feature size, label dtype, parameter shapes."""
    omni, sine = (loaded[n].saved_model.signatures for n in ("omni", "sine"))
    spec = omni["adapt_and_predict"].structured_input_signature[1]
    assert spec["support_x"] == tf.TensorSpec([None, 28, 28, 1], tf.float32, "support_x")
    assert spec["query_x"] == tf.TensorSpec([None, 28, 28, 1], tf.float32, "query_x")
    assert spec["support_y"] == tf.TensorSpec([None], tf.int32, "support_y")
    assert spec["steps"] == tf.TensorSpec([], tf.int32, "steps")
    sine_spec = sine["adapt"].structured_input_signature[1]
    assert sine_spec["support_x"].shape.as_list() == [None, 1]
    assert sine_spec["support_y"] == tf.TensorSpec([None, 1], tf.float32, "support_y")
    predict = omni["predict"].structured_input_signature[1]
    task = {name: v.numpy() for name, v in loaded["omni"].initial_parameters.items()}
    assert set(predict) == set(task) | {"x"}
    for name, value in task.items():
        assert predict[name].shape.as_list() == list(value.shape), name


def test_serving_default_is_adapt_and_predict(runs, loaded):
    """TensorFlow Serving's default key serves adapt_and_predict: same inputs, same outputs."""
    sx, sy, qx = runs["data"]["sine"]
    sig = loaded["sine"].saved_model.signatures
    assert sig["serving_default"].structured_input_signature == sig["adapt_and_predict"].structured_input_signature
    feed = dict(support_x=tf.constant(sx), support_y=tf.constant(sy), query_x=tf.constant(qx), steps=tf.constant(2))
    np.testing.assert_array_equal(sig["serving_default"](**feed)["outputs"].numpy(),
                                  sig["adapt_and_predict"](**feed)["outputs"].numpy())


def test_declared_shapes_are_still_checked_when_fed(runs, loaded):
    """A loaded signature does not check its specs, and Grappler trusts them: a transposed parameter (same
    size) or a vector of steps must still be refused, naming the argument."""
    sx, sy, qx = runs["data"]["sine"]
    model = loaded["sine"]
    sig = model.saved_model.signatures
    params = model.initial_parameters
    name = next(n for n, v in params.items() if v.shape.rank == 2 and v.shape[0] != v.shape[1])
    flipped = dict(params, **{name: tf.transpose(params[name])})
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"Shape of tensor {name} \["):
        sig["predict"](x=tf.constant(qx), **flipped)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"task parameter {name} must have shape "
                                                             rf"\[{params[name].shape[0]}, {params[name].shape[1]}\]"):
        model.predict(qx, flipped)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Shape of tensor steps \[2\]"):
        sig["adapt"](support_x=tf.constant(sx), support_y=tf.constant(sy), steps=tf.constant([1, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"support_x is empty"):  # a named in-graph check
        sig["adapt"](support_x=tf.constant(sx[:0]), support_y=tf.constant(sy[:0]), steps=tf.constant(1))


# ---------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def loaded(runs):
    return {name: load_export(path) for name, path in runs["dirs"].items()}


def _bad_omni(runs):
    sx, sy, qx = runs["data"]["omni"]
    return {
        "rank": ("support_x", dict(support_x=sx[..., 0])),
        "image_size": ("support_x", dict(support_x=np.zeros((20, 32, 32, 1), np.float32))),
        "channels": ("query_x", dict(query_x=qx.repeat(3, axis=-1))),
        "label_too_large": ("support_y", dict(support_y=np.where(sy == 0, OMNI_CLASSES, sy))),
        "label_negative": ("support_y", dict(support_y=sy - 1)),
        "label_rank": ("support_y", dict(support_y=sy[:, None])),
        "count_mismatch": ("support_y", dict(support_y=sy[:10])),
        "negative_steps": ("steps", dict(steps=-1)),
        "steps_vector": ("steps", dict(steps=np.array([1, 2], np.int32))),
        "huge_steps": ("steps", dict(steps=np.int32(2**31 - 1))),  # would abort the process allocating
        "nan_support": ("support_x", dict(support_x=np.where(sx > 0.5, np.nan, sx).astype(np.float32))),
        "nan_query": ("query_x", dict(query_x=np.full_like(qx, np.inf))),
        "empty_support": ("support_x", dict(support_x=sx[:0], support_y=sy[:0])),
        "empty_query": ("query_x", dict(query_x=qx[:0])),
    }


BAD_OMNI = ["rank", "image_size", "channels", "label_too_large", "label_negative", "label_rank",
            "count_mismatch", "negative_steps", "steps_vector", "huge_steps", "nan_support", "nan_query",
            "empty_support", "empty_query"]


@pytest.mark.parametrize("case", BAD_OMNI)
def test_bad_input_raises_invalid_argument_naming_it(runs, loaded, case):
    arg, override = _bad_omni(runs)[case]
    sx, sy, qx = runs["data"]["omni"]
    inputs = dict(support_x=sx, support_y=sy, query_x=qx, steps=np.int32(2))
    inputs.update(override)
    signature = loaded["omni"].saved_model.signatures["adapt_and_predict"]
    # A declared dimension is TensorFlow's runtime check ("Shape of tensor support_x [...] is not compatible"),
    # the rest the named in-graph checks: both name the argument.
    named = rf"\b{arg} (must|is empty|holds)|Shape of tensor {arg} \["
    with pytest.raises(tf.errors.InvalidArgumentError, match=named):
        signature(**{k: tf.constant(v) for k, v in inputs.items()})
    if case in ("rank", "label_too_large", "negative_steps"):  # adapt checks its arguments too (via the helper)
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\b{arg} (must|is empty|holds)"):
            loaded["omni"].adapt(inputs["support_x"], inputs["support_y"], inputs["steps"])


def test_float_labels_and_steps_raise_naming_them(runs, loaded):
    sx, sy, qx = runs["data"]["omni"]
    model = loaded["omni"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"support_y must hold integer class labels"):
        model.adapt_and_predict(sx, sy.astype(np.float32), qx)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"steps must be an integer"):
        model.adapt(sx, sy, steps=2.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"steps does not fit in int32"):
        model.adapt(sx, sy, steps=2**40)  # was silently capped at 2**31 − 1
    # A failed in-graph check reaches the helper's user as its message alone, not TensorFlow's wrapping.
    for call, message in ((lambda: model.adapt(sx[..., 0], sy), r"support_x must have shape \[n, 28, 28, 1\]"),
                          (lambda: model.adapt(sx, sy[:3]),
                           r"support_x and support_y must hold the same number of examples; got 20 and 3"),
                          (lambda: model.adapt(sx * np.nan, sy), r"support_x holds non-finite values")):
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            call()
        assert re.fullmatch(message + r"[^\n]*", raised.value.message), raised.value.message
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"support_x must hold floating-point"):
        model.adapt(sx.astype(np.int32), sy)
    # Straight to the signature, TensorFlow rejects the dtype before the graph runs (no argument name).
    with pytest.raises(tf.errors.InvalidArgumentError):
        model.saved_model.signatures["adapt"](support_x=tf.constant(sx), support_y=tf.constant(sy, tf.float32),
                                              steps=tf.constant(1))


def test_bad_regression_targets_and_predict_inputs(runs, loaded):
    sx, sy, qx = runs["data"]["sine"]
    model = loaded["sine"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"support_y must have shape \[n, 1\]"):
        model.adapt(sx, sy[:, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"support_y holds non-finite"):
        model.adapt(sx, np.full_like(sy, np.nan))
    params = model.adapt(sx, sy, steps=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\bx must have shape \[n, 1\]"):
        model.predict(qx[:, 0], params)
    bad = dict(params, head__kernel=tf.zeros([3, 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"task parameter head__kernel must have shape"):
        model.predict(qx, bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"missing \['head__bias'\]"):
        model.predict(qx, {k: v for k, v in params.items() if k != "head__bias"})


# ---------------------------------------------------------------------------------------- library pieces
def test_parameter_names_are_valid_and_unique():
    names = serving.parameter_names(["seq/dense/kernel", "seq/dense.kernel", "0/x:0", "x", "steps"])
    assert list(names.values()) == ["seq/dense/kernel", "seq/dense.kernel", "0/x:0", "x", "steps"]
    assert list(names)[:3] == ["seq__dense__kernel", "seq__dense_kernel", "p_0__x_0"]
    assert len(set(names)) == 5 and not {"x", "steps"} & set(names)
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n) for n in names)


def test_export_refuses_to_replace_a_folder_that_is_not_a_saved_model(runs, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        serving.export(str(runs["root"] / "omni"), str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    for output in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "sub"):  # a file where a folder should be
        with pytest.raises(FileExistsError, match="notes.txt is a file, not a folder"):
            serving.export(str(runs["root"] / "omni"), str(output))


def test_checkpoint_restore_and_checkpoint_without_model_weights(runs, tmp_path):
    warped, _, _ = artifacts.load(str(runs["root"] / "omni"))
    prefix = tf.train.Checkpoint(step=tf.Variable(1, dtype=tf.int64), other=tf.Variable(1.0)).save(
        str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="holds no model weights"):
        run_checkpoints.restore_checkpoint(warped, prefix)
    with pytest.raises(FileNotFoundError):
        run_checkpoints.restore_checkpoint(warped, str(tmp_path / "missing"))
    # A whole-model checkpoint reaches every warp variable (WarpBlock keeps its maps as attributes).
    expected = [v.numpy().copy() for v in warped.model.variables]
    prefix = tf.train.Checkpoint(step=tf.Variable(7, dtype=tf.int64), model=warped.model).save(
        str(tmp_path / "model_ckpt"))
    for v in warped.model.variables:
        v.assign(tf.zeros_like(v))
    assert run_checkpoints.restore_checkpoint(warped, prefix) == 7
    for before, v in zip(expected, warped.model.variables):
        np.testing.assert_array_equal(before, v.numpy())


def test_checkpoints_the_omniglot_and_fewshot_trainers_write(runs, tmp_path):
    """Those trainers save ``list(model.variables)`` as ``model`` (with ``step``; ``R/best/best`` without):
    --checkpoint restores exactly those values, and ``latest`` names the run's other checkpoint folders."""
    warped, _, _ = artifacts.load(str(runs["root"] / "omni"))
    expected = [v.numpy() + 0.5 for v in warped.model.variables]
    trained = [tf.Variable(e) for e in expected]
    latest = tf.train.Checkpoint(step=tf.Variable(9, dtype=tf.int64), model=trained,
                                 warp_optimizer=tf.Variable(1.0)).save(str(tmp_path / "checkpoints" / "ckpt"))
    best = tf.train.Checkpoint(model=trained).write(str(tmp_path / "best" / "best"))
    for prefix, step in ((latest, 9), (best, None)):
        for v in warped.model.variables:
            v.assign(tf.zeros_like(v))
        assert run_checkpoints.restore_checkpoint(warped, prefix) == step
        for e, v in zip(expected, warped.model.variables):
            np.testing.assert_array_equal(e, v.numpy(), err_msg=v.path)
    fewer = tf.train.Checkpoint(model=trained[:-1]).write(str(tmp_path / "fewer"))
    with pytest.raises(ValueError, match=f"stores {len(expected) - 1} model variables"):
        run_checkpoints.restore_checkpoint(warped, fewer)
    assert run_checkpoints.latest_checkpoint_dir(str(tmp_path)) == str(tmp_path / "checkpoints")
    phase = tmp_path / "demo"
    tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(phase / "warp" / "checkpoints" / "ckpt"))
    with pytest.raises(FileNotFoundError, match=r"keeps its checkpoints in \[.*warp/checkpoints'\]"):
        run_checkpoints.latest_checkpoint_dir(str(phase))


def test_every_layer_is_registered_by_importing_warpgrad_tf():
    """A .keras file with any warpgrad layer (the maze's RNN cells included) loads after ``import warpgrad_tf``
    alone — what export.saved_model relies on in a fresh process."""
    names = ["WarpBlock", "TaskFiLM", "BatchNormalization", "FusedBatchNormalization", "DiracInitializer",
             "WarpHyperRNNCell", "HyperRNNCell", "TanhRNNCell", "TNetsRNNCell"]
    code = ("import keras, warpgrad_tf\n"
            f"print([n for n in {names!r} if keras.saving.get_registered_object('warpgrad_tf>' + n) is None])")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_damaged_run_files_are_one_line_errors_naming_the_file(runs, tmp_path):
    import shutil

    cases = {
        "newer": ("warpgrad.json", lambda p: p.write_text(json.dumps(dict(json.loads(p.read_text()), new_field=1))),
                  "unknown fields \\['new_field'\\]"),
        "truncated": ("warpgrad.json", lambda p: p.write_text("{\n"), "warpgrad.json is not valid JSON"),
        "garbage": ("model.keras", lambda p: p.write_bytes(b"not a zip"), "model.keras is unreadable"),
    }
    for name, (file, damage, match) in cases.items():
        root = tmp_path / name
        shutil.copytree(runs["root"] / "omni" / "model", root / "model")
        damage(root / "model" / file)
        with pytest.raises(ValueError, match=match):
            artifacts.load(str(root))
        rc = saved_model_cli.main([f"--root_dir={root}", f"--output={tmp_path / (name + '_sm')}"])
        assert rc == 2


def test_try_sine_flags_are_checked_before_loading(tmp_path, capsys):
    from export import try_sine

    for args, match in ((["--shots=0"], "--shots must be >= 1"), (["--steps=-1"], "--steps must be >= 0"),
                        ([], "holds no SavedModel")):
        with pytest.raises(SystemExit, match=match):
            try_sine.main([f"--saved_model={tmp_path / 'nope'}"] + args)


def test_sequential_model_round_trips_through_artifacts(tmp_path):
    """The demo's model is a keras.Sequential, whose variable paths lose its name scope when reloaded."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(4, name="d"), wg.WarpBlock("dense", name="w"),
                              keras.layers.Dense(1, name="head")], name="sine_learner")
    warped = wg.WarpedModel(model)
    artifacts.save(str(tmp_path), warped, wg.sgd(0.1), loss="mse", steps=1, batch_size=None, method="warpgrad",
                   training_step=0)
    loaded, _, spec = artifacts.load(str(tmp_path))
    assert sorted(loaded.names["warp"]) == sorted(p.split("/", 1)[-1] for p in warped.names["warp"])
    assert set(spec.roles) == set(loaded.role_map())
