"""Warp layers: identity initialisation, every Table 3 variant, config and .keras round trips."""

import zipfile

import keras
import numpy as np
import pytest

import warpgrad_tf as wg
from tests.layer_case import assert_config_round_trip, run_layer_test
from warpgrad_tf.model import sublayers

CONV_VARIANTS = {
    "conv3x3": dict(kind="conv", kernel_size=3),
    "conv1x1": dict(kind="conv", kernel_size=1),
    "conv2x2": dict(kind="conv", kernel_size=2),
    "conv4x4": dict(kind="conv", kernel_size=4),
    "scale": dict(kind="scale"),
    "relu": dict(kind="conv", output_activation="relu"),
    "bn": dict(kind="conv", batch_norm="after"),
    "bn_before": dict(kind="conv", batch_norm="before"),
    "bn_relu": dict(kind="conv", batch_norm="after", output_activation="relu"),
    "bn_res_relu": dict(kind="conv", batch_norm="after", residual=True, output_activation="relu"),
    "2layer_bn_res": dict(kind="conv", num_layers=2, batch_norm="after", residual=True, activation="relu"),
    "residual_scale": dict(kind="scale", residual=True),
}
DENSE_VARIANTS = {
    "linear": dict(kind="dense"),
    "res_tanh": dict(kind="dense", num_layers=2, hidden_units=7, activation="tanh", residual=True),
}


def _model(block, conv=True):
    inputs = keras.Input((6, 6, 3) if conv else (5,))
    return keras.Model(inputs, block(inputs))


@pytest.mark.parametrize("name", ["conv3x3", "conv1x1", "conv2x2", "conv4x4", "scale", "residual_scale"])
def test_affine_conv_warps_start_as_identity(name):
    block = wg.WarpBlock(**CONV_VARIANTS[name])
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(block(x), x, atol=1e-6)
    assert block.is_affine


@pytest.mark.parametrize("kernel_size", [2, 4, 6, (2, 3), (4, 1)])
def test_even_kernel_conv_warps_are_exact_identities(kernel_size):
    """'same' padding puts the extra pixel of an even kernel after the input: the identity tap is
    ``(k - 1) // 2``, not the centre ``k // 2`` (which shifted the map by one pixel)."""
    x = np.random.default_rng(0).standard_normal((2, 7, 6, 3)).astype("float32")
    if isinstance(kernel_size, int):
        block = wg.WarpBlock(kind="conv", kernel_size=kernel_size, num_layers=2)
        np.testing.assert_array_equal(block(x), x)
        assert block.is_affine
    conv = keras.layers.Conv2D(3, kernel_size, padding="same", kernel_initializer=wg.layers.DiracInitializer())
    np.testing.assert_array_equal(conv(x), x)


@pytest.mark.parametrize("name", ["linear", "res_tanh"])
def test_dense_warps_start_as_identity(name):
    block = wg.WarpBlock(**DENSE_VARIANTS[name])
    x = np.random.default_rng(0).standard_normal((4, 5)).astype("float32")
    np.testing.assert_allclose(block(x), x, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CONV_VARIANTS) + sorted(DENSE_VARIANTS))
def test_config_round_trip_and_keras_saving(name, tmp_path):
    conv = name in CONV_VARIANTS
    kwargs = CONV_VARIANTS.get(name) or DENSE_VARIANTS[name]
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 3) if conv else (2, 5)).astype("float32")
    run_layer_test(wg.WarpBlock(name="warp", **kwargs), x, tmp_path, expected_output_shape=x.shape, seed=1)


def test_film_round_trip_identity_and_roles(tmp_path):
    inputs = keras.Input((4, 4, 3))
    film = wg.TaskFiLM(embedding_dim=2, name="film")
    model = keras.Model(inputs, keras.layers.Dense(2)(film(inputs)))
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(film(x), x, atol=1e-6)  # zero embedding: identity
    warped = wg.WarpedModel(model)
    assert any(n.endswith("film/embedding") for n in warped.names["task"])
    assert {n.split("/")[-1] for n in warped.names["warp"]} == {"gamma_kernel", "beta_kernel"}
    run_layer_test(wg.TaskFiLM(embedding_dim=2, name="film"), x, tmp_path, expected_output_shape=x.shape)
    film.embedding.assign([0.5, -1.0])
    path = str(tmp_path / "film.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path)(x), model(x), atol=1e-6)


def test_film_warp_block_layer_case(tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 6, 6, 3)).astype("float32")
    run_layer_test(wg.layers.FiLMWarpBlock(kernel_size=3, hidden_units=4, embedding_dim=2, name="fwarp"), x,
                   tmp_path, expected_output_shape=x.shape, seed=3)


def test_warp_batchnorm_constants_are_config():
    x = np.random.default_rng(4).standard_normal((2, 6, 6, 3)).astype("float32")
    for block in (wg.WarpBlock(kind="conv", num_layers=2, batch_norm="after", bn_momentum=0.5, bn_epsilon=0.01),
                  wg.layers.FiLMWarpBlock(kernel_size=3, hidden_units=4, embedding_dim=2, bn_momentum=0.5,
                                          bn_epsilon=0.01)):
        block(x)
        norms = [n for n in sublayers(block) if isinstance(n, wg.BatchNormalization)]
        assert len(norms) == 2 and {(n.momentum, n.epsilon) for n in norms} == {(0.5, 0.01)}
        assert_config_round_trip(block)
        assert type(block).from_config(block.get_config()).bn_momentum == 0.5


def test_a_keras_file_from_before_the_move_to_layers_still_loads(tmp_path):
    """FiLMWarpBlock and MaxPooling2D moved from warpgrad_tf.models to warpgrad_tf.layers; their registered names
    (``warpgrad_tf>FiLMWarpBlock``, ``warpgrad_tf>MaxPooling2D``) did not, so a file that records the old
    modules loads into the same classes with the same outputs."""
    inputs = keras.Input((6, 6, 3))
    x = wg.layers.MaxPooling2D(2, name="pool")(inputs)
    outputs = wg.layers.FiLMWarpBlock(kernel_size=3, hidden_units=4, embedding_dim=2, name="warp")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(2)
    for v in model.trainable_variables:
        v.assign(v.numpy() + 0.1 * rng.standard_normal(v.shape))
    path, old = tmp_path / "new.keras", tmp_path / "old.keras"
    model.save(str(path))
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                text = data.decode()
                assert '"warpgrad_tf>FiLMWarpBlock"' in text and '"warpgrad_tf>MaxPooling2D"' in text
                for module, before in (("warpgrad_tf.layers.film_warp", "warpgrad_tf.models.omniglot"),
                                       ("warpgrad_tf.layers.max_pooling", "warpgrad_tf.models.max_pooling")):
                    assert f'"{module}"' in text
                    text = text.replace(f'"{module}"', f'"{before}"')
                data = text.encode()
            dst.writestr(item, data)
    loaded = keras.saving.load_model(str(old))
    assert type(loaded.get_layer("warp")) is wg.layers.FiLMWarpBlock
    assert type(loaded.get_layer("pool")) is wg.layers.MaxPooling2D
    x = rng.standard_normal((2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kind"):
        wg.WarpBlock(kind="lstm")
    with pytest.raises(ValueError, match="batch_norm"):
        wg.WarpBlock(batch_norm="middle")
    with pytest.raises(ValueError, match="num_layers"):
        wg.WarpBlock(num_layers=0)
    with pytest.raises(ValueError, match="hidden_units must be >= 1"):
        wg.WarpBlock("dense", num_layers=2, hidden_units=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        wg.TaskFiLM(embedding_dim=0)


@pytest.mark.parametrize("name", ["2layer_bn_res", "bn_before"])
def test_tensorflow_checkpoints_reach_every_warp_variable(name, tmp_path):
    import tensorflow as tf

    model = _model(wg.WarpBlock(name="warp", **CONV_VARIANTS[name]))
    rng = np.random.default_rng(2)
    for v in model.variables:
        v.assign(v.numpy() + 0.1 * rng.standard_normal(v.shape))
    saved = [v.numpy().copy() for v in model.variables]
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    for v in model.variables:
        v.assign(np.zeros(v.shape))
    tf.train.Checkpoint(model=model).restore(path).assert_consumed()
    for before, v in zip(saved, model.variables):
        np.testing.assert_array_equal(before, v.numpy())
