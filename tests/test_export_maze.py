"""SavedModel export of a trained maze agent (warpgrad_tf.serving_rl through export/): one test per claim.

A tiny Warp-RNN agent (Eq. 20) is trained for two iterations by ``trainers/maze.py`` (gin bindings; one warp
update per iteration, Alg. 3 with η = 1) and exported with ``python -m export.saved_model``. The in-memory
reference rebuilds the trainer's objects from its checkpoint and takes one more task update with the
trainer's own step (:func:`trainers.maze.make_train_step` + Keras Adam) on a logged batch. A separate Python
process that never imports ``warpgrad_tf`` loads the SavedModel and must match it to 1e-5: ``act`` along the
logged episodes, ``adapt`` with steps 0 and 1, and ``act`` under the adapted parameters.
"""

import contextlib
import io
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

from export import saved_model as saved_model_cli
from export.load import load as load_export
from tests.conftest import REPO
from trainers import maze as trainer
from warpgrad_tf import agent_run, artifacts, serving_rl
from warpgrad_tf.envs import MazeEnv
from warpgrad_tf.layers.rnn import make_cell
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.rl import build_agent, evaluate, rollout
from warpgrad_tf.version import __version__

TOL = 1e-5
TINY = dict(cell="warp_rnn", batch_size=2, episode_length=5, maze_size=5, units=8, meta_units=4, num_iterations=2,
            warp_period=1, log_every=1, checkpoint_every=1, plot=False)
A2C = dict(discount=0.9, value_coef=0.1, entropy_coef=0.03)
LOG_SEED = 987654


def _reference_agent(root):
    """The trainer's agent and task Adam, rebuilt and restored from its latest checkpoint."""
    env = MazeEnv(size=TINY["maze_size"], batch_size=TINY["batch_size"], episode_length=TINY["episode_length"])
    cell = make_cell("warp_rnn", units=TINY["units"], meta_units=TINY["meta_units"])
    warped = WarpedModel(build_agent(cell, env.observation_size, env.num_actions))
    optimizer = keras.optimizers.Adam(1e-3, global_clipnorm=4.0)
    optimizer.build(list(warped.variables("task").values()))
    path = tf.train.latest_checkpoint(os.path.join(root, "checkpoints"))
    tf.train.Checkpoint(model=warped.model, task_optimizer=optimizer).restore(path).expect_partial()
    return env, warped, optimizer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("maze_export")
    root, out = str(tmp / "run"), str(tmp / "saved_model")
    gin.clear_config()
    try:
        gin.parse_config([f"train_eval.{k} = {v!r}" for k, v in TINY.items()])
        trainer.main.run(root)
    finally:
        gin.clear_config()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert saved_model_cli.main([f"--root_dir={root}", f"--output={out}"]) == 0

    env, warped, optimizer = _reference_agent(root)
    theta0, warp = warped.values("task"), warped.values("warp")
    episodes = tf.function(lambda: rollout(warped, theta0, warp, env, tf.constant(LOG_SEED, tf.int64)))()
    metrics, grads, _ = trainer.make_train_step(warped, env, **A2C)(tf.constant(LOG_SEED, tf.int64))
    # The trainer's step played the very episodes that are logged here.
    np.testing.assert_allclose(metrics["mean_episode_return"],
                               np.mean(np.sum(episodes.rewards.numpy(), 1)), atol=1e-6)
    replay = tf.function(lambda task: evaluate(warped, task, warp, episodes.observations))
    logits0, values0 = replay(theta0)
    optimizer.apply_gradients(zip(grads, warped.variables("task").values()))  # one trainer task update
    theta1 = warped.values("task")
    logits1, values1 = replay(theta1)
    data = str(tmp / "episodes.npz")
    np.savez(data, observations=episodes.observations.numpy(), actions=episodes.actions.numpy(),
             rewards=episodes.rewards.numpy())
    return {"tmp": tmp, "root": root, "out": out, "data": data, "stdout": stdout.getvalue(),
            "episodes": {k: v.numpy() for k, v in episodes._asdict().items()},
            "theta0": {k: v.numpy() for k, v in theta0.items()}, "theta1": {k: v.numpy() for k, v in theta1.items()},
            "warp": {k: v.numpy() for k, v in warp.items()},
            "logits": [logits0.numpy(), logits1.numpy()], "values": [values0.numpy(), values1.numpy()]}


FRESH_PROCESS = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
from export.load import load

out_dir, data, result = sys.argv[1:4]
d = np.load(data)
obs, actions, rewards = d["observations"], d["actions"], d["rewards"]
agent = load(out_dir)  # export/load.py: TensorFlow only
sm, sig = agent.saved_model, agent.saved_model.signatures
res = {}
before = {"warp": [v.numpy() for v in sm.warp], "task": [v.numpy() for v in sm.task.values()],
          "adam": [v.numpy() for v in sm.adam_m.values()] + [v.numpy() for v in sm.adam_v.values()]}
mask = tf.ones(actions.shape, tf.float32)
params = {k: sig["adapt"](observations=tf.constant(obs), actions=tf.constant(actions), rewards=tf.constant(rewards),
                          mask=mask, steps=tf.constant(k)) for k in (0, 1)}
for k in (0, 1):
    for name, v in params[k].items():
        res[f"params/{k}/{name}"] = v.numpy()
helper_params = agent.adapt(obs, actions, rewards, steps=1)
for name, v in helper_params.items():
    res[f"helper_params/{name}"] = v.numpy()
for k, task in (("init", None), (1, params[1])):
    state = sig["initial_state"](batch_size=tf.constant(obs.shape[0]))
    logits, values = [], []
    for t in range(obs.shape[1]):
        if task is None:  # the helper, default parameters
            lg, val, state = agent.act(obs[:, t], state)
        else:  # the raw signature
            o = sig["act"](observation=tf.constant(obs[:, t]), **state, **task)
            lg, val, state = o["logits"], o["value"], {n: o[n] for n in state}
        logits.append(lg.numpy()); values.append(val.numpy())
    res[f"logits/{k}"] = np.stack(logits, 1)
    res[f"values/{k}"] = np.stack(values, 1)
after = {"warp": [v.numpy() for v in sm.warp], "task": [v.numpy() for v in sm.task.values()],
         "adam": [v.numpy() for v in sm.adam_m.values()] + [v.numpy() for v in sm.adam_v.values()]}
unchanged = {k: all(np.array_equal(a, b) for a, b in zip(before[k], after[k])) for k in before}
for i, v in enumerate(after["warp"]):
    res[f"warp/{i}"] = v
meta = {k: v.numpy() for k, v in sig["metadata"]().items()}
meta = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in meta.items()}
meta = {k: (v.decode() if isinstance(v, bytes) else [x.decode() if isinstance(x, bytes) else x for x in v]
            if isinstance(v, list) else v) for k, v in meta.items()}
assert "warpgrad_tf" not in sys.modules, "the SavedModel must load without warpgrad_tf"
np.savez(result, **res)
with open(result + ".json", "w") as f:
    json.dump({"meta": meta, "unchanged": unchanged, "warp_paths": [v.name for v in sm.warp]}, f)
"""


@pytest.fixture(scope="module")
def fresh(run):
    result = str(run["tmp"] / "fresh.npz")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, run["out"], run["data"], result], cwd=str(run["tmp"]),
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(result + ".json") as f:
        return dict(np.load(result)), json.load(f)


def _by_path(results, prefix, meta):
    return {path: results[f"{prefix}/{name}"] for name, path in zip(meta["parameter_names"], meta["parameter_paths"])}


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# ---------------------------------------------------------------------------------------- equivalence
def test_act_matches_in_memory_agent_along_a_rollout(run, fresh):
    results, _ = fresh
    assert _max_diff(results["logits/init"], run["logits"][0]) <= TOL
    assert _max_diff(results["values/init"], run["values"][0]) <= TOL
    # ... and under adapted parameters (adapt's output fed to the act signature).
    assert _max_diff(results["logits/1"], run["logits"][1]) <= TOL
    assert _max_diff(results["values/1"], run["values"][1]) <= TOL


def test_adapt_one_step_is_the_trainers_task_update(run, fresh):
    results, info = fresh
    meta = info["meta"]
    for prefix in ("params/1", "helper_params"):
        got = _by_path(results, prefix, meta)
        assert set(got) == set(run["theta1"])
        for path, want in run["theta1"].items():
            assert _max_diff(got[path], want) <= TOL, f"{prefix} {path}"
    # The update moved the parameters (by about Adam's step size), so the comparison is not vacuous.
    moved = max(_max_diff(run["theta1"][p], run["theta0"][p]) for p in run["theta0"])
    assert moved > 1e-4


def test_adapt_zero_steps_returns_initial_parameters(run, fresh):
    results, info = fresh
    got = _by_path(results, "params/0", info["meta"])
    for path, want in run["theta0"].items():
        np.testing.assert_array_equal(got[path], want)


def test_adapt_leaves_warp_parameters_and_exported_state_unchanged(run, fresh):
    results, info = fresh
    assert info["unchanged"] == {"warp": True, "task": True, "adam": True}
    assert len(info["warp_paths"]) == len(run["warp"]) > 0
    for i, want in enumerate(run["warp"].values()):  # the trained φ, in WarpedModel order
        np.testing.assert_array_equal(results[f"warp/{i}"], want)
    assert not set(info["meta"]["parameter_paths"]) & set(run["warp"])  # adapt returns task parameters only


def test_metadata_and_cli_summary(run, fresh):
    meta = fresh[1]["meta"]
    assert (meta["kind"], meta["cell"], meta["rule"], meta["version"]) == ("maze_agent", "warp_rnn", "adam",
                                                                          __version__)
    assert meta["observation_shape"] == [16] and meta["num_actions"] == 4
    assert meta["state_sizes"] == [TINY["units"], TINY["meta_units"], TINY["meta_units"]]
    assert meta["learning_rate"] == pytest.approx(1e-3)
    assert json.loads(meta["rule_hyperparameters"]) == pytest.approx(
        {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "global_clipnorm": 4.0})
    assert [meta[k] for k in A2C] == pytest.approx(list(A2C.values()))
    assert meta["training_step"] == meta["optimizer_step"] == TINY["num_iterations"]
    spec = json.loads(meta["spec_json"])
    assert spec["extra"]["maze_size"] == TINY["maze_size"] and spec["state_names"] == ["state_0", "state_1",
                                                                                       "state_2"]
    assert "Exported maze agent (warp_rnn, training step 2)" in run["stdout"]
    assert artifacts.is_agent_run(run["root"])


# ---------------------------------------------------------------------------------------- mask and bad input
@pytest.fixture(scope="module")
def agent(run):
    return load_export(run["out"])


def test_signatures_declare_ranks_and_sizes(run, agent):
    sig = agent.saved_model.signatures
    adapt = sig["adapt"].structured_input_signature[1]
    assert adapt["observations"] == tf.TensorSpec([None, None, 16], tf.float32, "observations")
    assert adapt["actions"] == tf.TensorSpec([None, None], tf.int32, "actions")
    assert adapt["rewards"].shape.as_list() == adapt["mask"].shape.as_list() == [None, None]
    assert adapt["steps"] == tf.TensorSpec([], tf.int32, "steps")
    assert sig["initial_state"].structured_input_signature[1]["batch_size"].shape.rank == 0
    act = sig["act"].structured_input_signature[1]
    assert act["observation"].shape.as_list() == [None, 16]
    sizes = [TINY["units"], TINY["meta_units"], TINY["meta_units"]]
    assert [act[f"state_{i}"].shape.as_list() for i in range(3)] == [[None, n] for n in sizes]
    for name, value in agent.initial_parameters.items():
        assert act[name].shape == value.shape, name
    # Declared, and still checked when fed straight to the signature (a loaded signature trusts its specs).
    state = agent.initial_state(2)
    obs = tf.constant(run["episodes"]["observations"][:, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Shape of tensor state_0 \[2,3\]"):
        sig["act"](observation=obs, **dict(state, state_0=tf.zeros([2, 3])), **agent.initial_parameters)


def test_serving_default_is_act(agent):
    """TensorFlow Serving's default key serves act: same inputs, same outputs."""
    sig = agent.saved_model.signatures
    assert sig["serving_default"].structured_input_signature == sig["act"].structured_input_signature
    feed = dict(agent.initial_state(2), observation=tf.ones([2, 16]), **agent.initial_parameters)
    want, got = sig["act"](**feed), sig["serving_default"](**feed)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())


def test_task_optimiser_state_is_keras_public_state_and_its_next_step(run):
    """The Adam state the export continues is the trainer's (read from Keras' public ``optimizer.variables``),
    and ``clipped(adam(...))`` from it takes Keras' next step; Keras' TensorFlow optimiser cannot run
    statelessly (the reason given in warpgrad_tf.serving_rl: this fails the day it can)."""
    from warpgrad_tf.update_rules import adam, clipped

    _, warped, optimizer = _reference_agent(run["root"])
    task = warped.variables("task")
    state = agent_run.keras_adam_state(optimizer, task)
    assert int(state.count) == int(optimizer.iterations) == TINY["num_iterations"]
    rng = np.random.default_rng(0)
    grads = {p: tf.constant(rng.standard_normal(v.shape).astype(np.float32)) for p, v in task.items()}
    rule = clipped(adam(1e-3), 4.0)  # the trainer's Adam(1e-3, global_clipnorm=4)
    want, _ = rule.update(grads, state, {p: tf.convert_to_tensor(v) for p, v in task.items()})
    optimizer.apply_gradients([(grads[p], v) for p, v in task.items()])
    for p, v in task.items():
        np.testing.assert_allclose(v.numpy(), want[p].numpy(), atol=1e-6, err_msg=p)
    with pytest.raises(ValueError, match="stateless_apply is not supported with the TensorFlow backend"):
        optimizer.stateless_apply(list(optimizer.variables), list(grads.values()), list(task.values()))


def test_mask_drops_padding_after_episode_end(run, agent):
    """Episodes of length 3 padded to 5 adapt exactly like the same episodes cut to length 3."""
    e = run["episodes"]
    mask = np.zeros_like(e["rewards"])
    mask[:, :3] = 1.0
    padded = agent.adapt(e["observations"], e["actions"], e["rewards"] + 5.0 * (1 - mask), mask, steps=2)
    cut = agent.adapt(e["observations"][:, :3], e["actions"][:, :3], e["rewards"][:, :3], steps=2)
    for name in cut:
        assert _max_diff(padded[name], cut[name]) <= TOL, name


def _bad_adapt(e):
    o, a, r = e["observations"], e["actions"], e["rewards"]
    ones = np.ones_like(r)
    holey = ones.copy()
    holey[0, 1] = 0.0
    return {
        "obs_rank": ("observations", dict(observations=o[:, 0])),
        "obs_size": ("observations", dict(observations=o[..., :10])),
        "actions_float": ("actions", dict(actions=a.astype(np.float32))),
        "actions_out_of_range": ("actions", dict(actions=np.where(np.eye(*a.shape, dtype=bool), [[4], [-1]], a))),
        "actions_length": ("actions", dict(actions=a[:, :-1])),
        "rewards_nan": ("rewards", dict(rewards=np.full_like(r, np.nan))),
        "mask_holes": ("mask", dict(mask=holey)),
        "mask_empty": ("mask", dict(mask=0 * ones)),
        "steps_negative": ("steps", dict(steps=-1)),
        "steps_float": ("steps", dict(steps=1.0)),
    }


@pytest.mark.parametrize("case", ["obs_rank", "obs_size", "actions_float", "actions_out_of_range", "actions_length",
                                  "rewards_nan", "mask_holes", "mask_empty", "steps_negative", "steps_float"])
def test_bad_adapt_input_raises_invalid_argument_naming_it(run, agent, case):
    arg, override = _bad_adapt(run["episodes"])[case]
    e = run["episodes"]
    inputs = dict(observations=e["observations"], actions=e["actions"], rewards=e["rewards"],
                  mask=np.ones_like(e["rewards"]), steps=1)
    inputs.update(override)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\b{arg} (must|holds)"):
        agent.adapt(**inputs)


def test_bad_act_and_initial_state_input(run, agent):
    obs = run["episodes"]["observations"][:, 0]
    state = agent.initial_state(2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\bobservation must have shape \[n, 16\]"):
        agent.act(obs[:, :15], state)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\bstate_1 must have the same leading"):
        agent.act(obs, dict(state, state_1=agent.initial_state(3)["state_1"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\bstate_2 must have shape \[n, 4\]"):
        agent.act(obs, dict(state, state_2=tf.zeros([2, 5])))
    params = agent.initial_parameters
    name = next(iter(params))
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"task parameter {name} must have shape"):
        agent.act(obs, state, dict(params, **{name: tf.zeros([1, 1])}))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\bbatch_size must be >= 1"):
        agent.initial_state(0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\bbatch_size must be an integer"):
        agent.initial_state(2.0)


def test_export_with_checkpoint_and_refusals(run, tmp_path):
    path, d = serving_rl.export(run["root"], str(tmp_path / "sm"), checkpoint="latest")
    assert d["training_step"] == d["optimizer_step"] == TINY["num_iterations"]
    with pytest.raises(ValueError, match="--seed"):
        serving_rl.export(run["root"], str(tmp_path / "sm2"), seed=1)
    # The checkpoint is resolved before the model loads: a run folder holding only agent.json (no model.keras)
    # fails on the missing checkpoint.
    bare = tmp_path / "bare" / "model"
    bare.mkdir(parents=True)
    shutil.copy(os.path.join(run["root"], "model", "agent.json"), bare / "agent.json")
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        serving_rl.export(str(tmp_path / "bare"), str(tmp_path / "sm4"), checkpoint="latest")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        serving_rl.export(run["root"], str(tmp_path))
    from warpgrad_tf import serving  # the supervised exporter names the agent exporter instead of failing later

    with pytest.raises(ValueError, match="serving_rl.export"):
        serving.export(run["root"], str(tmp_path / "sm3"))
    assert not (tmp_path / "sm3").exists()
