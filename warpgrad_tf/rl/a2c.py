"""Advantage actor-critic (A2C) loss for the maze task learner (App. I; Wang et al. 2016; Miconi et al. 2019).

For a batch of episodes with per-step policy logits, value estimates, actions and rewards (``[B, T]``)::

    R_t = r_t + γ R_{t+1},  R_T = 0                    discounted return (episodes end: no bootstrap)
    A_t = sg[R_t − V_t]                                 advantage, held constant
    policy  = −mean_{b,t} log π(a_t | s_t) A_t
    value   =  mean_{b,t} (R_t − V_t)²
    entropy =  mean_{b,t} H(π(· | s_t))
    sum_p2  =  mean_{b,t} Σ_a π(a | s_t)²               concentration of the policy
    loss    = policy + value_coef · value + entropy_coef · sum_p2        regulariser="sum_p2" (default)
    loss    = policy + value_coef · value − entropy_coef · entropy       regulariser="entropy"

The paper (App. I) gives no A2C details; the default follows the authors' released code (their
``maze_navigation``, after Miconi et al.'s backpropamine ``maze.py``): γ = 0.9 (``gr``), value_coef = 0.1
(``blossv``), and an "entropy" term that in fact *penalises* Σ_a p² with weight 0.03 (``bent``; Σ p² is
largest for a deterministic policy, so the penalty keeps the policy spread out, as an entropy bonus would).
Their loss sums over the batch and steps and divides by batch size and episode length, i.e. the means above.
``regulariser="entropy"`` is the textbook entropy bonus this project used first. The same loss is the task
loss and (Eq. 12) the meta loss of the Warp-RNN.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

__all__ = ["A2CLoss", "REGULARISERS", "a2c_loss", "check_coefficients", "check_regulariser",
           "discounted_returns"]

#: The policy regularisers of :func:`a2c_loss` (module docstring): the released code's Σ p² penalty, or an
#: entropy bonus.
REGULARISERS = ("sum_p2", "entropy")


class A2CLoss(NamedTuple):
    """The A2C loss and its terms (scalars); ``entropy`` and ``sum_p2`` are both reported, whichever
    regulariser the loss uses."""

    loss: tf.Tensor
    policy: tf.Tensor
    value: tf.Tensor
    entropy: tf.Tensor
    sum_p2: tf.Tensor


def check_coefficients(discount, value_coef, entropy_coef):
    """Validate A2C constants; returns them as floats."""
    discount, value_coef, entropy_coef = float(discount), float(value_coef), float(entropy_coef)
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"A2C discount must lie in [0, 1]; got {discount}.")
    if value_coef < 0 or entropy_coef < 0:
        raise ValueError(f"A2C coefficients must be >= 0; got value_coef={value_coef}, entropy_coef={entropy_coef}.")
    return discount, value_coef, entropy_coef


def discounted_returns(rewards, discount):
    """``R_t = r_t + γ R_{t+1}`` with ``R_T = 0`` for ``rewards`` of shape ``[B, T]``."""
    rewards = tf.convert_to_tensor(rewards)
    reversed_time = tf.reverse(tf.transpose(rewards), axis=[0])  # [T, B], last step first
    returns = tf.scan(lambda acc, r: r + discount * acc, reversed_time, initializer=tf.zeros_like(rewards[:, 0]))
    return tf.transpose(tf.reverse(returns, axis=[0]))


def check_regulariser(regulariser):
    """Validate the name of a policy regulariser; returns it."""
    if regulariser not in REGULARISERS:
        raise ValueError(f"Unknown A2C policy regulariser {regulariser!r}; choose one of {list(REGULARISERS)}.")
    return regulariser


def a2c_loss(logits, values, actions, rewards, *, discount=0.9, value_coef=0.1, entropy_coef=0.03,
             mask=None, regulariser="sum_p2") -> A2CLoss:
    """The A2C loss of a batch of episodes.

    Args:
      logits: ``[B, T, A]`` policy logits.
      values: ``[B, T]`` value estimates V(s_t).
      actions: ``[B, T]`` int actions taken.
      rewards: ``[B, T]`` reward received after each action.
      discount, value_coef, entropy_coef: γ and the weights of the value loss and the policy regulariser.
      mask: optional ``[B, T]``, 1 for the steps of an episode and 0 for padding after its end: padding
        earns no reward and is left out of the means (the exported agent's logged episodes). None: every
        step counts.
      regulariser: ``"sum_p2"`` — add ``entropy_coef · mean Σ_a p²`` (the released code, the default);
        ``"entropy"`` — subtract ``entropy_coef · mean H(π)``.
    """
    discount, value_coef, entropy_coef = check_coefficients(discount, value_coef, entropy_coef)
    check_regulariser(regulariser)
    logits = tf.convert_to_tensor(logits)
    rewards = tf.cast(rewards, logits.dtype)
    if mask is None:
        mean = tf.reduce_mean
    else:
        mask = tf.cast(mask, logits.dtype)
        rewards = rewards * mask
        mean = lambda x: tf.reduce_sum(x * mask) / tf.reduce_sum(mask)  # noqa: E731
    returns = discounted_returns(rewards, discount)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    taken = tf.gather(log_probs, tf.cast(actions, tf.int32), axis=-1, batch_dims=2)
    advantage = tf.stop_gradient(returns - values)
    policy = -mean(taken * advantage)
    value = mean(tf.square(returns - values))
    probs = tf.exp(log_probs)
    entropy = mean(-tf.reduce_sum(probs * log_probs, axis=-1))
    sum_p2 = mean(tf.reduce_sum(tf.square(probs), axis=-1))
    if regulariser == "sum_p2":
        loss = policy + value_coef * value + entropy_coef * sum_p2
    else:
        loss = policy + value_coef * value - entropy_coef * entropy
    return A2CLoss(loss, policy, value, entropy, sum_p2)
