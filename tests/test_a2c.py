"""A2C loss (hand computation on a 3-step episode) and the functional rollout / replay of the agent."""

import math

import numpy as np
import pytest
import tensorflow as tf

from warpgrad_tf import WarpedModel
from warpgrad_tf.envs import MazeEnv
from warpgrad_tf.layers.rnn import make_cell
from warpgrad_tf.rl import a2c_loss, build_agent, discounted_returns, evaluate, rollout


def test_a2c_loss_equals_hand_computation_on_a_3_step_episode():
    logits = tf.constant([[[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0), 0.0]]])
    values = tf.Variable([[1.0, 2.0, 3.0]])
    actions = tf.constant([[0, 1, 2]])
    rewards = tf.constant([[0.0, 10.0, 0.0]])
    # By hand: γ = 0.5 → returns (5, 10, 0); advantages R − V = (4, 8, −3).
    # π(a_t): 1/4, 1/6, 2/5.  Entropies: ln 4; −(½ ln ½ + 3·⅙ ln ⅙); −(3·⅕ ln ⅕ + ⅖ ln ⅖).
    policy = -(4 * math.log(1 / 4) + 8 * math.log(1 / 6) - 3 * math.log(2 / 5)) / 3
    value = (16 + 64 + 9) / 3
    entropy = (math.log(4) - (0.5 * math.log(0.5) + 0.5 * math.log(1 / 6))
               - (0.6 * math.log(0.2) + 0.4 * math.log(0.4))) / 3
    # Σ_a p²: ¼ (uniform); ¼ + 3/36; 3/25 + 4/25.
    sum_p2 = (1 / 4 + (1 / 4 + 3 / 36) + 7 / 25) / 3
    with tf.GradientTape() as tape:
        out = a2c_loss(logits, values, actions, rewards, discount=0.5, value_coef=0.25, entropy_coef=0.5)
    assert out.policy.numpy() == pytest.approx(policy, rel=1e-6)
    assert out.value.numpy() == pytest.approx(value, rel=1e-6)
    assert out.entropy.numpy() == pytest.approx(entropy, rel=1e-6)
    assert out.sum_p2.numpy() == pytest.approx(sum_p2, rel=1e-6)
    # The default is the released code's loss: a penalty on Σ p², not an entropy bonus.
    assert out.loss.numpy() == pytest.approx(policy + 0.25 * value + 0.5 * sum_p2, rel=1e-6)
    bonus = a2c_loss(logits, values, actions, rewards, discount=0.5, value_coef=0.25, entropy_coef=0.5,
                     regulariser="entropy")
    assert bonus.loss.numpy() == pytest.approx(policy + 0.25 * value - 0.5 * entropy, rel=1e-6)
    # The advantage is held constant: values get gradient from the value loss only.
    np.testing.assert_allclose(tape.gradient(out.loss, values).numpy(), [[0.25 * 2 / 3 * d for d in (-4, -8, 3)]],
                               rtol=1e-6)


def test_discounted_returns():
    np.testing.assert_allclose(discounted_returns(tf.constant([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]), 0.9).numpy(),
                               [[1 + 0.81 * 2, 1.8, 2.0], [0, 0, 0]], rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(discount=1.5), "discount must lie in"),
    (dict(value_coef=-1.0), "coefficients must be >= 0"),
    (dict(regulariser="l2"), r"Unknown A2C policy regulariser 'l2'; choose one of \['sum_p2', 'entropy'\]"),
])
def test_bad_a2c_constants(kwargs, match):
    with pytest.raises(ValueError, match=match):
        a2c_loss(tf.zeros([1, 2, 4]), tf.zeros([1, 2]), tf.zeros([1, 2], tf.int32), tf.zeros([1, 2]), **kwargs)


def test_rollout_and_replay_agree():
    env = MazeEnv(size=5, batch_size=3, episode_length=12)
    warped = WarpedModel(build_agent(make_cell("warp_rnn", units=8, meta_units=4), env.observation_size,
                                     env.num_actions))
    task, warp = warped.values("task"), warped.values("warp")
    greedy = tf.function(lambda s: rollout(warped, task, warp, env, s, greedy=True))(tf.constant(5, tf.int64))
    assert greedy.observations.shape == (3, 12, 16) and greedy.actions.shape == (3, 12)
    logits, values = evaluate(warped, task, warp, greedy.observations)
    assert logits.shape == (3, 12, 4) and values.shape == (3, 12)
    # The replay is the policy that acted: greedy actions are the arg-max of the replayed logits.
    np.testing.assert_array_equal(np.argmax(logits.numpy(), -1), greedy.actions.numpy())
    # Sampled episodes are reproducible from the seed and differ across seeds.
    play = tf.function(lambda s: rollout(warped, task, warp, env, s))
    a, b, c = play(tf.constant(1, tf.int64)), play(tf.constant(1, tf.int64)), play(tf.constant(2, tf.int64))
    np.testing.assert_array_equal(a.actions.numpy(), b.actions.numpy())
    assert not np.array_equal(a.actions.numpy(), c.actions.numpy())
    # The recorded observations are what the environment shows (first step: t = 0, no previous action).
    np.testing.assert_array_equal(a.observations[:, 0, 10:].numpy(), np.zeros((3, 6)))
    np.testing.assert_array_equal(a.observations[:, 1, 12:].numpy(), np.eye(4)[a.actions[:, 0].numpy()])
    np.testing.assert_array_equal(a.observations[:, 1:, 11].numpy(), a.rewards[:, :-1].numpy())
