"""A recurrent actor-critic for the maze, run functionally under given task / warp parameters (App. I).

:func:`build_agent` makes a one-step Keras model ``[obs, *cell_state] -> [logits, value, *new_state]``: a
recurrent cell (:mod:`warpgrad_tf.layers.rnn`) whose output feeds two linear heads, ``policy`` and
``value`` (task parameters). Wrapped in a :class:`~warpgrad_tf.WarpedModel`, its variables split into task
θ (W, V, b and the heads) and warp φ (the cell's warp variables).

:func:`rollout` plays a batch of episodes in a ``tf.while_loop`` (no gradients: the environment is not
differentiable and actions are sampled), and :func:`evaluate` replays the recorded observations through the
same step model with ``tf.scan`` under a gradient tape. Both call :meth:`WarpedModel.apply` with parameter
*tensors*, so nothing is assigned into a variable on the differentiated path and the same episodes can be
scored under any (θ, φ) — which is what the warp objective (Eq. 12) needs.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf


class Episodes(NamedTuple):
    """A batch of recorded episodes.

    Attributes:
      observations: ``[B, T, obs]`` float32.
      actions: ``[B, T]`` int32.
      rewards: ``[B, T]`` float32, the reward after each action.
    """

    observations: tf.Tensor
    actions: tf.Tensor
    rewards: tf.Tensor


def build_agent(cell, observation_size, num_actions, name="maze_agent"):
    """The one-step actor-critic model around ``cell`` (built on ``observation_size`` inputs)."""
    obs = keras.Input((int(observation_size),), name="observation")
    states = [keras.Input((int(s),), name=f"state_{i}") for i, s in enumerate(cell.state_size)]
    output, new_states = cell(obs, states)
    logits = keras.layers.Dense(int(num_actions), name="policy")(output)
    value = keras.layers.Dense(1, name="value")(output)
    return keras.Model([obs, *states], [logits, value, *new_states], name=name)


def _split(warped, outputs):
    logits, value, *state = outputs
    return logits, value[:, 0], state


def initial_state(warped, batch_size):
    """Zero recurrent state for ``batch_size`` episodes."""
    model = warped.model
    return [tf.zeros([batch_size, int(s.shape[-1])], model.inputs[0].dtype) for s in model.inputs[1:]]


def rollout(warped, task, warp, env, seed, *, greedy=False, episodes=None, keep_forward=False) -> Episodes:
    """Play ``env.batch_size`` episodes of ``env.episode_length`` steps, sampling actions from the policy.

    Episode goals and teleports are keyed by ``seed`` (see :class:`~warpgrad_tf.envs.MazeEnv`); action
    sampling by ``seed`` too (a different stream). Every random draw of episode ``i`` is row ``i`` of a
    batch-wide stateless draw, so an episode is fixed by ``(seed, i)`` whichever other episodes are played
    with it. Call inside ``tf.function``.

    Args:
      episodes: ``(start, count)`` to play only episodes ``[start, start + count)`` of the batch (one
        replica's shard; ``start`` may be a scalar int tensor, ``count`` is a Python int). The environment
        still steps the whole batch (cheap), but the policy runs on those ``count`` episodes only, and their
        goals, starts, teleports and sampled actions are exactly those of the full batch's rows. None: all.
      keep_forward: also return the forward pass of a cell that replays episodes (``replays_episodes``) over
        the played episodes, as its ``replay`` takes it: ``(h [T, B, units], [traces before every replay
        segment, [T / K, B, units, units] per trace])`` (time-major; None for other cells), so that
        :func:`evaluate` under the same (θ, φ) skips the replay's forward pass.

    Returns:
      :class:`Episodes` with ``count`` (default ``env.batch_size``) rows; with ``keep_forward``,
      ``(episodes, forward)``.
    """
    b, steps = env.batch_size, env.episode_length
    start, count = (0, b) if episodes is None else episodes
    count = int(count)
    if count < 1 or (isinstance(start, int) and not 0 <= start <= b - count):
        raise ValueError(f"rollout episodes ({start}, {count}) must lie within the batch of {b} episodes.")
    sharded = episodes is not None and count != b
    start = tf.cast(start, tf.int32)
    env_state = env.reset(seed)
    key = tf.random.experimental.stateless_fold_in(env.key(seed), 977)
    # A shard's rows, and a shard-sized tensor put back at its rows of a zero batch (both with a dynamic
    # offset that XLA accepts: a compiled rollout plays the same episodes sharded or not).
    rows = (lambda x: tf.slice(x, [start] + [0] * (x.shape.rank - 1), [count, *x.shape[1:]])  # noqa: E731
            ) if sharded else (lambda x: x)
    into_batch = lambda x: tf.scatter_nd((start + tf.range(count))[:, None], x, [b, *x.shape[1:]])  # noqa: E731

    compiled = _replaying_cell(warped.model)  # the fused plastic cells: the loop as one XLA call, not a launch per step
    # A compiled cell's state is carried through the loop in the cell's own layout (the plastic cells' traces
    # as [B, units, units], :meth:`~warpgrad_tf.layers.rnn.HebbianRNNCell.replay_record`): XLA runs the loop
    # 2–4× faster than with the flat [B, units²] traces the one-step model takes (the same numbers).
    carry_of = compiled.replay_record if compiled is not None else (lambda state: state)
    state_of = (lambda carry: compiled.state_from_record(*carry)) if compiled is not None else (lambda c: c)

    def body(t, env_state, carry, obs_ta, act_ta, rew_ta):
        obs = rows(env.observe(env_state))
        logits, _, rnn_state = _split(warped, warped.apply(task, warp, [obs, *state_of(carry)])[0])
        if greedy:
            action = tf.argmax(logits, axis=-1, output_type=tf.int32)
            batch_action = into_batch(action) if sharded else action
        else:  # rows of a stateless categorical draw are independent: sample the whole batch, keep ours
            sample_key = tf.random.experimental.stateless_fold_in(key, t)
            batch_logits = into_batch(logits) if sharded else logits
            batch_action = tf.cast(tf.random.stateless_categorical(batch_logits, 1, sample_key)[:, 0], tf.int32)
            action = rows(batch_action)
        env_state, reward = env.step(env_state, tf.ensure_shape(batch_action, [b]))
        return (t + 1, env_state, carry_of(rnn_state), obs_ta.write(t, obs), act_ta.write(t, action),
                rew_ta.write(t, rows(reward)))

    cell = compiled if keep_forward else None

    def play(env_state):
        arrays = [tf.TensorArray(dtype, size=steps) for dtype in (tf.float32, tf.int32, tf.float32)]
        carry = carry_of(initial_state(warped, count))
        if cell is None:
            loop = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), env_state, carry, *arrays),
                                 maximum_iterations=steps)
            return [ta.stack() for ta in loop[3:]]
        record = lambda carry: cell.replay_record(state_of(carry))  # noqa: E731
        return _play_recording(cell, record, body, steps, env_state, carry, arrays)

    if compiled is not None:  # the whole loop as one XLA call (the step inlined)
        play = tf.function(play, jit_compile=True, autograph=False)
    obs, act, rew, *forward = play(env_state)
    swap = lambda x: tf.transpose(x, [1, 0] + list(range(2, x.shape.rank)))  # noqa: E731
    played = Episodes(swap(obs), swap(act), swap(rew))
    return (played, (forward[0], list(forward[1:])) if forward else None) if keep_forward else played


def _play_recording(cell, record, body, steps, env_state, carry, arrays):
    """The rollout loop of ``body`` in segments of the cell's replay (:func:`rollout`'s ``keep_forward``;
    ``record(carry)``: the cell's ``(h, traces)``): ``[obs, actions, rewards, h [T, B, units], *traces before
    every segment]`` (time-major)."""
    length = cell.replay_segment_length(steps)
    h, traces = record(carry)
    hs = tf.TensorArray(h.dtype, size=steps, element_shape=h.shape)
    stored = [tf.TensorArray(t.dtype, size=steps // length, element_shape=t.shape) for t in traces]

    def step(t, env_state, carry, hs, *arrays):
        t_next, env_state, carry, *arrays = body(t, env_state, carry, *arrays)
        return (t_next, env_state, carry, hs.write(t, record(carry)[0]), *arrays)

    def segment(s, env_state, carry, hs, stored, *arrays):
        stored = [a.write(s, t) for a, t in zip(stored, record(carry)[1])]
        _, env_state, carry, hs, *arrays = tf.while_loop(
            lambda t, *_: t < (s + 1) * length, step, (s * length, env_state, carry, hs, *arrays),
            maximum_iterations=length)
        return (s + 1, env_state, carry, hs, stored, *arrays)

    loop = tf.while_loop(lambda s, *_: s < steps // length, segment,
                         (tf.constant(0), env_state, carry, hs, stored, *arrays), maximum_iterations=steps // length)
    return [ta.stack() for ta in loop[5:]] + [loop[3].stack()] + [a.stack() for a in loop[4]]


def _replaying_cell(model, observations=None):
    """The agent's cell if it replays whole episodes itself (``replays_episodes``, the fused plastic cells)
    and the episodes' shape is static; else None."""
    cells = [layer for layer in model.layers if getattr(layer, "replays_episodes", False)]
    return cells[0] if cells and (observations is None or observations.shape.is_fully_defined()) else None


def evaluate(warped, task, warp, observations, forward=None):
    """Replay ``observations`` ``[B, T, obs]`` under (θ, φ): returns ``(logits [B, T, A], values [B, T])``.

    Step by step through the one-step model (``tf.scan``), or — for a cell that replays whole episodes
    (:meth:`warpgrad_tf.layers.rnn.HebbianRNNCell.replay`) — the cell over the whole sequence, then the
    ``policy`` and ``value`` heads of :func:`build_agent` on all its outputs at once; the same function.

    ``forward``: the forward pass kept by the rollout that played ``observations`` under these same (θ, φ)
    (``rollout(keep_forward=True)``): the cell's replay then skips its forward pass. None: replayed."""
    observations = tf.convert_to_tensor(observations)
    time_major = tf.transpose(observations, [1, 0, 2])
    cell = _replaying_cell(warped.model, observations)
    if forward is not None and cell is None:
        raise ValueError("evaluate forward= needs a cell that replays episodes (a fused plastic cell) and "
                         f"observations of static shape; got {observations.shape}.")
    if cell is not None:
        warped.check("task", task)
        warped.check("warp", warp)
        merged = {**warped.values("frozen"), **task, **warp}
        outputs = tf.transpose(cell.replay(time_major, {v.name: merged[v.path] for v in cell.weights},
                                           forward=forward), [1, 0, 2])
        heads = [warped.model.get_layer(name) for name in ("policy", "value")]
        logits, values = (head.stateless_call([merged[v.path] for v in head.trainable_variables], [], outputs)[0]
                          for head in heads)
        return logits, values[..., 0]

    def step(carry, obs):
        _, _, state = carry
        logits, value, state = _split(warped, warped.apply(task, warp, [obs, *state])[0])
        return logits, value, state

    b = tf.shape(observations)[0]
    num_actions = int(warped.model.outputs[0].shape[-1])
    init = (tf.zeros([b, num_actions], observations.dtype), tf.zeros([b], observations.dtype),
            initial_state(warped, b))
    logits, values, _ = tf.scan(step, time_major, initializer=init)
    return tf.transpose(logits, [1, 0, 2]), tf.transpose(values)
