"""Meta-reinforcement learning pieces (Sec. 4.3 (c.1), App. I): the A2C loss and a functional recurrent
actor-critic (:func:`build_agent`, :func:`rollout`, :func:`evaluate`)."""

from warpgrad_tf.rl.a2c import A2CLoss, a2c_loss, discounted_returns
from warpgrad_tf.rl.agent import Episodes, build_agent, evaluate, initial_state, rollout

__all__ = ["A2CLoss", "Episodes", "a2c_loss", "build_agent", "discounted_returns", "evaluate", "initial_state",
           "rollout"]
