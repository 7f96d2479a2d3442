"""Small models shared by the core tests."""

import keras

import warpgrad_tf as wg


def conv_dense_model(seed=0, warps=True):
    """A small conv-and-dense task learner with non-linear warps after each task layer."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((5, 5, 2)), keras.layers.Conv2D(3, 3, padding="same", name="conv")]
    if warps:
        layers.append(wg.WarpBlock("conv", kernel_size=3, num_layers=2, activation="tanh", name="wconv"))
    layers += [keras.layers.Activation("tanh"), keras.layers.Flatten(), keras.layers.Dense(4, name="fc")]
    if warps:
        layers.append(wg.WarpBlock("dense", num_layers=2, hidden_units=5, activation="tanh", name="wfc"))
    layers += [keras.layers.Activation("tanh"), keras.layers.Dense(2, name="head")]
    return keras.Sequential(layers, name="convdense")


def perturb_warps(warped, scale=0.3, seed=1):
    """Move warps away from their identity initialisation so second-order terms are non-zero."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for var in warped.variables("warp").values():
        var.assign(var.numpy() + scale * rng.standard_normal(var.shape))
