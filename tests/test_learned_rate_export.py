"""Meta-learned inner rates (Meta-SGD, Eq. 3; the learned α of App. F) survive saving and export.

A few-shot Meta-SGD run (one meta-step of ``trainers.fewshot`` on the miniImageNet-format fixture, with a meta
learning rate large enough to move the per-parameter rates well away from α₀) and two direct constructions (a
learned scalar α and per-layer rates, set away from α₀) are saved with ``artifacts.save`` and exported. A Python
process that imports only TensorFlow adapts with each SavedModel; its outputs must equal in-memory adaptation
with the *learned* rates (≤ 1e-5) and differ from adaptation with the initial α. The Meta-SGD reference rates
are read from the trainer's checkpoint, not from the saved model folder.
"""

import json
import os
import shutil
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from export import saved_model as saved_model_cli
from tests.conftest import REPO
from tests.helpers import conv_dense_model, perturb_warps
from tests.test_export import ENV, FRESH_PROCESS, TOL
from tests.test_fewshot_data import SIZE, write_mini_pickles
from trainers import fewshot
from warpgrad_tf import artifacts, learned_lr, run_checkpoints, serving

INNER_LR, STEPS = 0.4, (2,)
DIFFERS = 1e-3  # the learned rates must change adaptation by more than this (max abs output difference)
META_SGD = [f"train_eval.{b}" for b in (
    "meta_steps = 1", "inner_steps = 1", "queries = 2", "eval_episodes = 1", "val_episodes = 0",
    f"inner_lr = {INNER_LR}", "lr_meta_lr = 0.05")] + ["fewshot_convnet.filters = 4",
                                                         f"FewShotEpisodes.image_size = {SIZE}"]


def _train_meta_sgd(root, data_dir):
    gin_file = os.path.join(REPO, "configs", "fewshot", "miniimagenet_meta_sgd.gin")
    lines = open(gin_file).read().splitlines()
    gin.clear_config()
    gin.parse_config(lines + META_SGD)
    try:
        fewshot.main.run(str(root), data_dir=data_dir)
    finally:
        gin.clear_config()


def _checkpoint_rates(warped, checkpoint_dir):
    """The trainer's learned rates read from its checkpoint (``inner_rates``, in the rate's group order)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoint_dir))
    rate = learned_lr.learned_rate(warped, INNER_LR, "per_parameter")
    for i, v in enumerate(rate.variables.values()):
        v.assign(reader.get_tensor(f"inner_rates/{i}/.ATTRIBUTES/VARIABLE_VALUE"))
    model = [reader.get_tensor(f"model/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(len(warped.model.variables))]
    return rate, model


def _reference(warped, rule, loss_fn, batch_size, learning_rate):
    """In-memory adaptation from the warped model's current values, with ``learning_rate`` (None: the rule's α)."""
    task0, warp = warped.values("task"), warped.values("warp")
    frozen, state = warped.values("frozen"), warped.values("state")

    @tf.function
    def adapt_and_predict(sx, sy, qx, steps):
        learner = wg.inner_loop(rule, loss_fn, steps, frozen=frozen, learning_rate=learning_rate)
        r = wg.adapt(warped, task0, warp, learner, wg.minibatches(sx, sy, batch_size, 0), state=state)
        return warped.apply(r.task, warp, qx, frozen=frozen, state=r.state, training=True)[0], r.task

    return adapt_and_predict


def _direct(root, granularity):
    """A small Sequential conv/dense learner with perturbed warps and learned rates set away from α₀."""
    warped = wg.WarpedModel(conv_dense_model(seed=3))
    perturb_warps(warped, scale=0.3, seed=4)
    rule = wg.sgd(0.1) if granularity == "scalar" else wg.momentum(0.05, beta=0.5)
    rate = learned_lr.learned_rate(warped, rule.learning_rate, granularity)
    for i, v in enumerate(rate.variables.values()):
        v.assign(0.37 if granularity == "scalar" else 0.02 + 0.04 * i)
    artifacts.save(str(root), warped, rule, loss="softmax_cross_entropy", steps=STEPS[-1], batch_size=4,
                   method="warpgrad", training_step=5, learned_rate=rate)
    return warped, rule, rate


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned_rate_export")
    os.makedirs(root / "mini")
    _train_meta_sgd(root / "meta_sgd", write_mini_pickles(root / "mini"))
    warped, rule, spec = artifacts.load(str(root / "meta_sgd"))
    rate, model = _checkpoint_rates(warped, str(root / "meta_sgd" / "checkpoints"))
    for v, value in zip(warped.model.variables, model):  # R/model holds the trained learner the checkpoint holds
        np.testing.assert_array_equal(v.numpy(), value, err_msg=v.path)
    moved = max(float(np.max(np.abs(v.numpy() - INNER_LR))) for v in rate.variables.values())
    assert moved > 0.02, moved
    dirs = {"meta_sgd": serving.export(str(root / "meta_sgd"), str(root / "meta_sgd_sm"))[0]}

    # The same run as the old code wrote it (no learned_rate.npz, only the extra flag): --checkpoint recovers it.
    old = root / "meta_sgd_old"
    shutil.copytree(root / "meta_sgd", old)
    os.remove(old / "model" / artifacts.RATES_FILE)
    spec_path = old / "model" / artifacts.SPEC_FILE
    payload = json.loads(spec_path.read_text())
    del payload["learned_rate"]
    spec_path.write_text(json.dumps(payload))
    assert saved_model_cli.main([f"--root_dir={old}", f"--output={root / 'old_sm'}", "--checkpoint=latest"]) == 0

    rng = np.random.default_rng(0)
    ways, shape = int(spec.extra["ways"]), [SIZE, SIZE, 3]
    data = {"meta_sgd": (rng.uniform(size=[2 * ways] + shape).astype(np.float32),
                         np.tile(np.arange(ways, dtype=np.int32), 2), rng.uniform(size=[6] + shape).astype(np.float32))}
    loss = wg.losses.softmax_cross_entropy
    refs = {"meta_sgd": (_reference(warped, rule, loss, None, rate.rates()),
                         _reference(warped, rule, loss, None, None))}
    rates = {"meta_sgd": rate}
    for granularity in ("scalar", "per_layer"):
        w, r, lr = _direct(root / granularity, granularity)
        dirs[granularity] = serving.export(str(root / granularity), str(root / f"{granularity}_sm"))[0]
        data[granularity] = (rng.uniform(size=(6, 5, 5, 2)).astype(np.float32), np.array([0, 1, 1, 0, 1, 0], np.int32),
                             rng.uniform(size=(4, 5, 5, 2)).astype(np.float32))
        refs[granularity] = (_reference(w, r, loss, 4, lr.rates()), _reference(w, r, loss, 4, None))
        rates[granularity] = lr

    expected = {}
    for name, (learned, initial) in refs.items():
        for k in STEPS:
            outputs, task = learned(*data[name], tf.constant(k))
            expected[name, k] = {"learned": outputs.numpy(), "initial": initial(*data[name], tf.constant(k))[0].numpy(),
                                 "task": {p: t.numpy() for p, t in task.items()}}

    exports = {}
    for name, (sx, sy, qx) in data.items():
        path = str(root / f"{name}_data.npz")
        np.savez(path, support_x=sx, support_y=sy, query_x=qx)
        exports[name] = {"dir": dirs[name], "data": path, "steps": list(STEPS), "meta_out": str(root / f"{name}.json")}
    out = str(root / "fresh.npz")
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps({"exports": exports, "out": out})],
                          cwd=str(root), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = {name: json.load(open(e["meta_out"])) for name, e in exports.items()}
    return {"root": root, "results": dict(np.load(out)), "meta": meta, "expected": expected, "rates": rates}


@pytest.mark.parametrize("name", ["meta_sgd", "scalar", "per_layer"])
def test_tensorflow_only_adaptation_uses_the_learned_rates(runs, name):
    results, meta = runs["results"], runs["meta"][name]
    names = dict(zip(meta["parameter_names"], meta["parameter_paths"]))
    for k in STEPS:
        want = runs["expected"][name, k]
        for how in ("signature", "helper", "adapt_then_predict"):
            got = results[f"{name}/{how}/{k}"]
            diff = float(np.max(np.abs(got - want["learned"])))
            assert diff <= TOL, f"{name} {how} steps={k}: max abs diff {diff} from adaptation with the learned rates"
            away = float(np.max(np.abs(got - want["initial"])))
            assert away > DIFFERS, f"{name} {how} steps={k}: only {away} from adaptation with the initial α"
        for sig_name, path in names.items():  # a reloaded Sequential's paths lose its name scope ("convdense/")
            key = path if path in want["task"] else next(p for p in want["task"] if p.endswith("/" + path))
            np.testing.assert_allclose(results[f"{name}/params/{k}/{sig_name}"], want["task"][key], atol=TOL,
                                       err_msg=f"{name} steps={k} {path}")


def test_metadata_describes_the_learned_rates(runs):
    meta = runs["meta"]
    for name, granularity in (("meta_sgd", "per_parameter"), ("scalar", "scalar"), ("per_layer", "per_layer")):
        learned = json.loads(meta[name]["spec_json"])["learned_rate"]
        values = np.concatenate([np.ravel(v.numpy()) for v in runs["rates"][name].variables.values()])
        assert learned["granularity"] == granularity and learned["rates"] == values.size
        assert (learned["min"], learned["max"]) == pytest.approx((values.min(), values.max()))
    assert meta["scalar"]["learning_rate"] == pytest.approx(0.37)  # the learned α, not the rule's 0.1
    assert json.loads(meta["scalar"]["rule_hyperparameters"])["learning_rate"] == pytest.approx(0.1)
    assert meta["meta_sgd"]["learning_rate"] == pytest.approx(INNER_LR)  # α₀; the rates are per parameter


def test_an_older_run_exports_the_rates_of_its_checkpoint(runs):
    """The run folder as the old code wrote it (no learned_rate.npz) exported with --checkpoint=latest holds the
    same values as the export of R/model — θ0 and the learned rates — so it adapts as the test above checks."""
    def variables(name):
        reader = tf.train.load_checkpoint(str(runs["root"] / name / "variables" / "variables"))
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "/.ATTRIBUTES/" in k}

    new, old = variables("meta_sgd_sm"), variables("old_sm")
    assert set(new) == set(old) and any(k.startswith("inner_rates/") for k in new)
    for k in new:
        np.testing.assert_array_equal(new[k], old[k], err_msg=k)


def test_saved_rates_round_trip_through_artifacts(runs):
    for name in ("meta_sgd", "scalar", "per_layer"):
        warped, _, spec = artifacts.load(str(runs["root"] / name))
        loaded = artifacts.load_learned_rate(str(runs["root"] / name), warped, spec)
        saved = runs["rates"][name]
        assert loaded.granularity == saved.granularity and len(loaded.variables) == len(saved.variables)
        for a, b in zip(loaded.variables.values(), saved.variables.values()):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_learned_rate_is_never_exported_with_the_initial_alpha(runs, tmp_path):
    root = runs["root"]
    warped, rule, spec = artifacts.load(str(root / "meta_sgd"))
    with pytest.raises(ValueError, match=r"meta-learned its inner learning rates \(per_parameter\)"):
        serving.AdaptiveModelSaver(warped, rule, spec)
    with pytest.raises(ValueError, match="written by an older version.*--checkpoint"):
        serving.export(str(root / "meta_sgd_old"), str(tmp_path / "sm"))
    rate = artifacts.load_learned_rate(str(root / "meta_sgd"), warped, spec)
    no_rates = tf.train.Checkpoint(model=list(warped.model.variables)).write(str(tmp_path / "no_rates"))
    with pytest.raises(ValueError, match="holds no meta-learned inner rates"):
        run_checkpoints.restore_checkpoint(warped, no_rates, learned_rate=rate)
    latest = tf.train.latest_checkpoint(str(root / "meta_sgd" / "checkpoints"))
    with pytest.raises(ValueError, match="records no learned rate"):
        run_checkpoints.restore_checkpoint(warped, latest)
    damaged = tmp_path / "damaged"
    shutil.copytree(root / "scalar", damaged)
    (damaged / "model" / artifacts.RATES_FILE).write_bytes(b"not an npz")
    w, _, s = artifacts.load(str(damaged))
    with pytest.raises(ValueError, match="learned_rate.npz .*unreadable"):
        artifacts.load_learned_rate(str(damaged), w, s)


def test_rates_of_one_group_must_agree():
    keras.utils.set_random_seed(0)
    warped = wg.WarpedModel(conv_dense_model(seed=0))
    values = learned_lr.learned_rate(warped, 0.1, "per_layer").parameter_values()
    kernel = next(p for p in values if p.endswith("conv/kernel"))
    values[kernel] = np.array(0.2, np.float32)
    with pytest.raises(ValueError, match="carry different values"):
        learned_lr.from_parameter_values(warped, "per_layer", values)


def test_legacy_learned_rate_table_is_the_methods():
    """The closed table the exporter reads for runs written before the rates were saved with the model is the
    methods' own (so the export wing need not import the algorithms)."""
    from warpgrad_tf.algorithms import methods

    learned = {name: m.learned_rate for name, m in methods.METHODS.items() if m.learned_rate is not None}
    assert artifacts.LEGACY_LEARNED_RATES == learned
    spec = artifacts.AdaptationSpec(rule="sgd", rule_hyperparameters={}, loss="mse", steps=1, batch_size=None,
                                    method="warpgrad", training_step=0, input_shape=[1], num_outputs=1, roles={},
                                    extra={"learned_rate": True})
    with pytest.raises(ValueError, match="method 'warpgrad' learns none"):
        artifacts.learned_rate_granularity(spec)
    assert artifacts.learned_rate_granularity(spec._replace(method="meta_sgd")) == "per_parameter"

