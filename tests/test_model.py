"""WarpedModel: role resolution (App. A), functional forward, BatchNorm state, clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from tests.helpers import conv_dense_model


def test_augmentation_defaults_put_warp_layers_in_warp():
    warped = wg.WarpedModel(conv_dense_model())
    assert all("/wconv/" in n or "/wfc/" in n for n in warped.names["warp"])
    assert {n.split("/")[1] for n in warped.names["task"]} == {"conv", "fc", "head"}
    assert warped.names["frozen"] == []


def test_partitioning_and_compression_by_declaration():
    model = conv_dense_model(warps=False)
    partitioned = wg.WarpedModel(model, warp=["fc"], frozen=[model.get_layer("conv")])
    assert {n.split("/")[1] for n in partitioned.names["warp"]} == {"fc"}
    assert {n.split("/")[1] for n in partitioned.names["frozen"]} == {"conv"}
    compressed = wg.WarpedModel(model, task=["head"], default_role="warp")
    assert {n.split("/")[1] for n in compressed.names["task"]} == {"head"}
    assert {n.split("/")[1] for n in compressed.names["warp"]} == {"conv", "fc"}


def test_functional_forward_matches_model_and_never_assigns():
    model = conv_dense_model()
    warped = wg.WarpedModel(model)
    x = tf.random.normal((3, 5, 5, 2))
    out, _ = warped.apply(warped.values("task"), warped.values("warp"), x)
    np.testing.assert_allclose(out, model(x), atol=1e-6)
    before = [v.numpy().copy() for v in model.variables]
    task = {k: v + 1.0 for k, v in warped.values("task").items()}
    shifted, _ = warped.apply(task, warped.values("warp"), x)
    assert not np.allclose(shifted, out)
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_batchnorm_statistics_are_returned_not_written():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1, name="o")])
    warped = wg.WarpedModel(model)
    assert len(warped.state_names) == 2
    x = tf.random.normal((8, 4)) * 3.0 + 2.0
    _, new_state = warped.apply(warped.values("task"), warped.values("warp"), x, training=True)
    moving_mean = [n for n in warped.state_names if n.endswith("moving_mean")][0]
    assert not np.allclose(new_state[moving_mean], 0.0)
    np.testing.assert_array_equal(warped.variables("state")[moving_mean].numpy(), 0.0)


def test_layer_declared_twice_is_an_error():
    model = conv_dense_model()
    with pytest.raises(ValueError, match="declared both task and warp"):
        wg.WarpedModel(model, task=["fc"], warp=["fc"])


def test_no_task_variables_is_an_error():
    with pytest.raises(ValueError, match="no task variables"):
        wg.WarpedModel(conv_dense_model(), default_role="warp")


def test_unknown_layer_and_unbuilt_model_are_errors():
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        wg.WarpedModel(conv_dense_model(), warp=["nope"])
    with pytest.raises(ValueError, match="not built"):
        wg.WarpedModel(keras.Sequential([keras.layers.Dense(2)]))


def test_mismatched_parameter_structures_are_named():
    warped = wg.WarpedModel(conv_dense_model())
    task = warped.values("task")
    missing = dict(task)
    name = sorted(missing)[0]
    del missing[name]
    x = tf.zeros((1, 5, 5, 2))
    with pytest.raises(ValueError, match=f"missing \\['{name}'\\]"):
        warped.apply(missing, warped.values("warp"), x)
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        warped.apply(dict(task, extra=tf.zeros(1)), warped.values("warp"), x)
    wrong = dict(task, **{name: tf.zeros((7, 7))})
    with pytest.raises(ValueError, match="shape"):
        warped.apply(wrong, warped.values("warp"), x)
    with pytest.raises(ValueError, match="role must be one of"):
        warped.assign("tasks", task)


def test_state_dicts_are_checked_like_parameters():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1, name="o")])
    warped = wg.WarpedModel(model)
    task, state, x = warped.values("task"), warped.values("state"), tf.zeros((2, 4))
    name = sorted(state)[0]
    with pytest.raises(ValueError, match=f"state parameters .* missing \\['{name}'\\]"):
        warped.apply(task, {}, x, state={k: v for k, v in state.items() if k != name})
    with pytest.raises(ValueError, match="unexpected \\['bn/moving_meen'\\]"):
        warped.apply(task, {}, x, state=dict(state, **{"bn/moving_meen": tf.zeros(3)}))


def test_a_single_layer_name_is_one_layer():
    by_string = wg.WarpedModel(conv_dense_model(), warp="fc")
    assert by_string.names == wg.WarpedModel(conv_dense_model(), warp=["fc"]).names
    fc = [n for n in by_string.names["warp"] if "/fc/" in n]
    assert fc and not any("/fc/" in n for n in wg.WarpedModel(conv_dense_model()).names["warp"])


def test_variable_roles_restore_a_partition():
    model = conv_dense_model(warps=False)
    original = wg.WarpedModel(model, warp=["fc"])
    restored = wg.WarpedModel(model, variable_roles=original.role_map())
    assert restored.names == original.names
