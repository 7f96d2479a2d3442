"""The Hebbian baselines of Fig. 4 (right): each cell's step against a NumPy implementation of its published
update (Miconi et al. 2018 Eq. 1–3; 2019 Eq. 1–6), the per-episode trace reset, gradients reaching the
plasticity coefficients, and unsupported plasticity settings."""


import numpy as np
import pytest
import tensorflow as tf

from warpgrad_tf import WarpedModel
from warpgrad_tf.envs import MazeEnv
from warpgrad_tf.layers.rnn import HebbianRNNCell, NeuromodulatedHebbianRNNCell, make_cell
from warpgrad_tf.rl import a2c_loss, build_agent, evaluate, rollout

B, D, N = 3, 5, 6  # batch, input, units


def _randomise(cell, rng):
    for v in cell.weights:
        v.assign(rng.normal(0.0, 0.5, size=v.shape) if v.shape.rank else rng.uniform(0.05, 0.5))
    return {v.name: v.numpy() for v in cell.weights}


def _numpy_hidden(w, x, h, hebb):
    """x_j(t) = tanh(Σ_k W_kj x_k + b_j + Σ_i (V_ij + α_ij Hebb_ij) h_i(t−1)), one example at a time."""
    out = np.empty_like(h)
    for n in range(len(x)):
        out[n] = np.tanh(x[n] @ w["kernel"] + w["bias"] + h[n] @ (w["recurrent_kernel"] + w["alpha"] * hebb[n]))
    return out


def _numpy_hebbian(w, x, h, hebb, rule):
    new_h = _numpy_hidden(w, x, h, hebb)
    eta, new = w["eta"], np.empty_like(hebb)
    for n in range(len(x)):
        for i in range(N):
            for j in range(N):
                if rule == "hebb":  # Miconi et al. 2018, Eq. 2
                    new[n, i, j] = (1 - eta) * hebb[n, i, j] + eta * h[n, i] * new_h[n, j]
                else:  # Eq. 3 (Oja)
                    new[n, i, j] = hebb[n, i, j] + eta * new_h[n, j] * (h[n, i] - new_h[n, j] * hebb[n, i, j])
    return new_h, new


def _numpy_neuromodulated(w, x, h, hebb, trace, modulation, clip):
    new_h = _numpy_hidden(w, x, h, hebb)
    new_hebb, new_trace = np.empty_like(hebb), np.empty_like(hebb)
    for n in range(len(x)):
        m = np.tanh(new_h[n] @ w["modulator_kernel"][:, 0] + w["modulator_bias"][0])  # the scalar neuromodulator
        fan = m * w["fanout"][0] + w["fanout_bias"]  # one value per post-synaptic neuron j
        for i in range(N):
            for j in range(N):
                product = h[n, i] * new_h[n, j]
                if modulation == "simple":  # Miconi et al. 2019, Eq. 3-4
                    new_hebb[n, i, j] = np.clip(hebb[n, i, j] + fan[j] * product, -clip, clip)
                else:  # Eq. 5-6
                    new_hebb[n, i, j] = np.clip(hebb[n, i, j] + fan[j] * trace[n, i, j], -clip, clip)
                    new_trace[n, i, j] = (1 - w["eta"]) * trace[n, i, j] + w["eta"] * product
    return new_h, new_hebb, new_trace


@pytest.mark.parametrize("kind", ["hebb", "oja", "simple", "retroactive"])
def test_each_cell_step_equals_numpy_of_its_published_update(float64, kind):
    rng = np.random.default_rng(0)
    if kind in HebbianRNNCell.RULES:
        cell = HebbianRNNCell(units=N, rule=kind)
    else:
        cell = NeuromodulatedHebbianRNNCell(units=N, modulation=kind, clip=0.8)  # a clip that binds
    cell.build((None, D))
    w = _randomise(cell, rng)
    x, h = rng.normal(size=(B, D)), np.tanh(rng.normal(size=(B, N)))
    hebb, trace = rng.uniform(-1, 1, size=(B, N, N)), rng.uniform(-1, 1, size=(B, N, N))
    states = [h, hebb.reshape(B, -1)] + ([trace.reshape(B, -1)] if kind == "retroactive" else [])
    assert cell.state_size == [N] + [N * N] * (len(states) - 1)
    out, new = cell(tf.constant(x), [tf.constant(s) for s in states])
    if kind in HebbianRNNCell.RULES:
        ref = _numpy_hebbian(w, x, h, hebb, kind)
    else:
        ref_h, ref_hebb, ref_trace = _numpy_neuromodulated(w, x, h, hebb, trace, kind, 0.8)
        ref = (ref_h, ref_hebb) + ((ref_trace,) if kind == "retroactive" else ())
        assert np.any(np.abs(ref_hebb) == 0.8)  # the clip is exercised
    np.testing.assert_allclose(out.numpy(), ref[0], atol=1e-6)
    assert len(new) == len(ref)
    for got, want in zip(new, ref):
        np.testing.assert_allclose(got.numpy().reshape(want.shape), want, atol=1e-6)


def _logged_batch(env, seed):
    """``(observations, actions, rewards)`` of a batch of episodes under random actions."""
    state, obs, actions, rewards = env.reset(seed), [], [], []
    for t in range(env.episode_length):
        obs.append(env.observe(state))
        actions.append(env.random_actions(seed, t))
        state, reward = env.step(state, actions[-1])
        rewards.append(reward)
    return tf.stack(obs, 1), tf.stack(actions, 1), tf.stack(rewards, 1)


@pytest.mark.parametrize("name, kwargs", [("hebbian", {}), ("neuromodulated", {"modulation": "retroactive"})])
def test_trace_resets_at_an_episode_boundary_and_plasticity_gets_gradients(name, kwargs):
    env = MazeEnv(size=5, batch_size=2, episode_length=6)
    warped = WarpedModel(build_agent(make_cell(name, units=5, **kwargs), env.observation_size, env.num_actions))
    task, warp = warped.values("task"), warped.values("warp")
    assert not warp  # every variable of a Hebbian agent is a task parameter, learned by A2C
    observations, actions, rewards = _logged_batch(env, 3)
    # Episode boundary: stepping the cell through episode 0 leaves a non-zero Hebbian trace; episode 1 of
    # the batch, as the trainer replays it (evaluate), acts as the agent started from the zero state, not
    # as the agent carrying episode 0's trace over.
    cell, policy = warped.model.get_layer(name), warped.model.get_layer("policy")

    def run(episode, state):
        logits = []
        for t in range(env.episode_length):
            h, state = cell(episode[:, t], state)
            logits.append(policy(h))
        return tf.stack(logits, 1), state

    zero = [tf.zeros([1, s]) for s in cell.state_size]
    _, after_first = run(observations[:1], zero)
    assert np.abs(after_first[1].numpy()).max() > 1e-3
    replayed, _ = evaluate(warped, task, warp, observations)
    fresh, _ = run(observations[1:], zero)
    carried, _ = run(observations[1:], after_first)
    np.testing.assert_allclose(replayed[1:].numpy(), fresh.numpy(), atol=1e-6)
    assert np.abs(carried.numpy() - fresh.numpy()).max() > 1e-5
    # The plasticity coefficients (α, η, the neuromodulator) receive non-zero A2C gradients.
    with tf.GradientTape() as tape:
        tape.watch(task)
        logits, values = evaluate(warped, task, warp, observations)
        loss = a2c_loss(logits, values, actions, rewards).loss
    grads = tape.gradient(loss, task)
    plastic = [p for p in task if p.split("/")[-1] in ("alpha", "eta", "modulator_kernel", "fanout")]
    assert len(plastic) == (2 if name == "hebbian" else 4)
    for path in plastic:
        assert np.abs(grads[path].numpy()).max() > 0, path


def test_unsupported_plasticity_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"HebbianRNNCell plasticity rule 'retroactive' is not supported; "
                                         r"choose one of \['hebb', 'oja'\]"):
        HebbianRNNCell(units=4, rule="retroactive")
    with pytest.raises(ValueError, match=r"modulation 'oja' is not supported; choose one of \['simple', "):
        NeuromodulatedHebbianRNNCell(units=4, modulation="oja")
    with pytest.raises(ValueError, match="clip must be > 0"):
        NeuromodulatedHebbianRNNCell(units=4, clip=0.0)


def test_saved_model_of_a_hebbian_agent_acts_like_the_in_memory_agent(tmp_path):
    """The agent exporter is generic over the cell: a neuromodulated (retroactive) agent, saved as the trainer
    saves it and exported, acts like the in-memory agent along a logged rollout, traces and all."""
    import keras

    from export.load import load as load_export
    from warpgrad_tf import agent_run, serving_rl

    env = MazeEnv(size=5, batch_size=2, episode_length=6)
    cell = make_cell("neuromodulated", units=5, modulation="retroactive")
    warped = WarpedModel(build_agent(cell, env.observation_size, env.num_actions))
    rng = np.random.default_rng(4)
    for v in (cell.alpha, cell.fanout):  # plasticity strong enough to matter
        v.assign(rng.normal(0.0, 1.0, size=v.shape))
    optimizer = keras.optimizers.Adam(1e-3, global_clipnorm=4.0)
    optimizer.build(list(warped.variables("task").values()))
    root, out = str(tmp_path / "run"), str(tmp_path / "saved_model")
    agent_run.save_agent(root, warped, optimizer, cell="neuromodulated", discount=0.9, value_coef=0.1,
                         entropy_coef=0.03, training_step=0, extra={"policy_regulariser": "sum_p2"})
    serving_rl.export(root, out)
    task, warp = warped.values("task"), warped.values("warp")
    logged = tf.function(lambda s: rollout(warped, task, warp, env, s))(tf.constant(11, tf.int64))
    want, values = evaluate(warped, task, warp, logged.observations)
    agent = load_export(out)
    state = agent.initial_state(2)
    assert sorted(state) == ["state_0", "state_1", "state_2"] and state["state_1"].shape == (2, 25)
    got, got_values = [], []
    for t in range(env.episode_length):
        logits, value, state = agent.act(logged.observations[:, t].numpy(), state)
        got.append(logits.numpy())
        got_values.append(value.numpy())
    assert np.abs(state["state_1"].numpy()).max() > 1e-3  # the exported trace moved
    np.testing.assert_allclose(np.stack(got, 1), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.stack(got_values, 1), values.numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["hebb", "oja", "simple", "retroactive"])
def test_fused_step_equals_the_plain_step_in_value_and_gradient_along_an_episode(float64, kind):
    """The default XLA-fused step (its recomputing backward) and the plain TensorFlow step give the same
    logits and the same A2C gradients of every parameter over a replayed episode."""
    env = MazeEnv(size=5, batch_size=2, episode_length=7)
    agents = []
    for fused in (True, False):
        if kind in HebbianRNNCell.RULES:
            cell = HebbianRNNCell(units=5, rule=kind, fused=fused, name="plastic")
        else:
            cell = NeuromodulatedHebbianRNNCell(units=5, modulation=kind, clip=0.3, fused=fused, name="plastic")
        agents.append(WarpedModel(build_agent(cell, env.observation_size, env.num_actions)))
    rng = np.random.default_rng(5)
    for a, b in zip(agents[0].model.weights, agents[1].model.weights):
        a.assign(rng.normal(0.0, 0.7, size=a.shape) if a.shape.rank else rng.uniform(0.05, 0.5))
        b.assign(a)
    task = agents[0].values("task")
    observations, actions, rewards = _logged_batch(env, 7)
    observations = tf.cast(observations, tf.float64)
    results = []
    for warped in agents:
        with tf.GradientTape() as tape:
            tape.watch(task)
            logits, values = evaluate(warped, task, {}, observations)
            loss = a2c_loss(logits, values, actions, rewards).loss
        results.append((logits.numpy(), tape.gradient(loss, task)))
    (fused_logits, fused_grads), (plain_logits, plain_grads) = results
    np.testing.assert_allclose(fused_logits, plain_logits, atol=1e-9)
    assert sorted(fused_grads) == sorted(plain_grads)
    for path in plain_grads:
        np.testing.assert_allclose(fused_grads[path].numpy(), plain_grads[path].numpy(), rtol=1e-7, atol=1e-9,
                                   err_msg=path)
    assert np.abs(plain_grads["plastic/alpha"].numpy()).max() > 0


@pytest.mark.parametrize("kind", ["hebb", "oja", "simple", "retroactive"])
def test_replay_hand_written_backward_equals_autodiff_of_the_step_loop(float64, kind):
    """``plastic.replay`` (one XLA call forward, segment checkpoints, the hand-written backward) against
    TensorFlow's own gradient of :func:`plastic_step` looped over the episode: the same hidden states and
    the same gradients of the inputs and of every weight, with 12 steps (segments of 3) and a clip that binds."""
    from warpgrad_tf.layers import plastic

    rng = np.random.default_rng(6)
    steps, batch, units = 12, 3, 5
    if kind in HebbianRNNCell.RULES:
        cell = HebbianRNNCell(units=units, rule=kind)
    else:
        cell = NeuromodulatedHebbianRNNCell(units=units, modulation=kind, clip=0.3)
    cell.build((None, D))
    w = {name: tf.constant(value) for name, value in _randomise(cell, rng).items()}
    xs = tf.constant(rng.normal(size=(steps, batch, D)))
    upstream = tf.constant(rng.normal(size=(steps, batch, units)))
    clip = getattr(cell, "clip", 0.0)

    def loop(xs, w):
        h = tf.zeros([batch, units], tf.float64)
        traces = [tf.zeros([batch, units * units], tf.float64)] * plastic.num_traces(kind)
        hs = []
        for t in range(steps):
            h, traces = plastic.plastic_step(kind, clip, xs[t], h, traces, w)
            hs.append(h)
        return tf.stack(hs)

    results = []
    for run in (loop, lambda xs, w: plastic.replay(kind, clip, xs, w)):
        with tf.GradientTape() as tape:
            tape.watch((xs, w))
            hs = run(xs, w)
            loss = tf.reduce_sum(hs * upstream)
        results.append((hs.numpy(), tape.gradient(loss, (xs, w))))
    (want_hs, (want_dx, want_dw)), (got_hs, (got_dx, got_dw)) = results
    np.testing.assert_allclose(got_hs, want_hs, atol=1e-12)
    np.testing.assert_allclose(got_dx.numpy(), want_dx.numpy(), rtol=1e-9, atol=1e-12)
    assert sorted(got_dw) == sorted(want_dw)
    for name in want_dw:
        np.testing.assert_allclose(got_dw[name].numpy(), want_dw[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    if kind in ("simple", "retroactive"):  # the clip binds somewhere along the episode
        n = units
        h, traces = tf.zeros([batch, n], tf.float64), [tf.zeros([batch, n * n], tf.float64)] * plastic.num_traces(kind)
        bound = False
        for t in range(steps):
            h, traces = plastic.plastic_step(kind, clip, xs[t], h, traces, w)
            bound = bound or bool(np.any(np.abs(traces[0].numpy()) == clip))
        assert bound


@pytest.mark.parametrize("kind", ["hebb", "retroactive"])
def test_a_rollouts_kept_forward_gives_the_replays_logits_and_gradients(kind):
    """``rollout(keep_forward=True)`` records the hidden states and segment traces of the episodes it plays;
    ``evaluate`` under the same parameters with that record (the trainer's A2C step) gives the logits and
    gradients of replaying them from scratch, with 9 steps (segments of 3)."""
    from warpgrad_tf.layers import plastic

    env = MazeEnv(size=5, batch_size=3, episode_length=9)
    if kind in HebbianRNNCell.RULES:
        cell = HebbianRNNCell(units=5, rule=kind, name="plastic")
    else:
        cell = NeuromodulatedHebbianRNNCell(units=5, modulation=kind, clip=0.3, name="plastic")
    warped = WarpedModel(build_agent(cell, env.observation_size, env.num_actions))
    rng = np.random.default_rng(7)
    for v in warped.model.weights:
        v.assign(rng.normal(0.0, 0.7, size=v.shape) if v.shape.rank else rng.uniform(0.05, 0.5))
    task = warped.values("task")

    @tf.function
    def both(seed):
        played, kept = rollout(warped, task, {}, env, seed, keep_forward=True)
        out = []
        for forward in (kept, None):
            with tf.GradientTape() as tape:
                tape.watch(task)
                logits, values = evaluate(warped, task, {}, played.observations, forward=forward)
                loss = a2c_loss(logits, values, played.actions, played.rewards).loss
            out.append((logits, tape.gradient(loss, task)))
        return played, kept, out

    played, kept, ((kept_logits, kept_grads), (logits, grads)) = both(tf.constant(3, tf.int64))
    hs, stored = kept
    assert hs.shape == (9, 3, 5) and [a.shape for a in stored] == [(3, 3, 5, 5)] * plastic.num_traces(kind)
    assert np.abs(stored[0][1:].numpy()).max() > 1e-3  # the traces before segments 2 and 3 moved
    np.testing.assert_allclose(kept_logits.numpy(), logits.numpy(), atol=1e-5)
    for path in grads:
        np.testing.assert_allclose(kept_grads[path].numpy(), grads[path].numpy(), rtol=1e-4, atol=1e-6, err_msg=path)
    assert np.abs(grads["plastic/alpha"].numpy()).max() > 0
    with pytest.raises(ValueError, match="does not fit episodes"):
        evaluate(warped, task, {}, played.observations[:, :6], forward=kept)
    # a replica's shard of the batch keeps the forward of its rows
    _, (shard_hs, shard_stored) = tf.function(lambda s: rollout(warped, task, {}, env, s, episodes=(1, 2),
                                                                keep_forward=True))(tf.constant(3, tf.int64))
    np.testing.assert_allclose(shard_hs.numpy(), hs.numpy()[:, 1:3], atol=1e-6)
    for got, want in zip(shard_stored, stored):
        np.testing.assert_allclose(got.numpy(), want.numpy()[:, 1:3], atol=1e-6)
