"""Shared test fixtures.

Data-dependent tests find the Omniglot zips in ``$WARPGRAD_OMNIGLOT_DIR`` or ``../shared/data/omniglot``
beside the repository. Where the data is absent they skip with a reason — unless ``WARPGRAD_REQUIRE_DATA=1``
(set by ``.ci/run``), which turns that skip into a failure so CI never passes by skipping.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _omniglot_dir():
    env = os.environ.get("WARPGRAD_OMNIGLOT_DIR")
    candidates = [env] if env else []
    candidates.append(os.path.join(REPO, "..", "shared", "data", "omniglot"))
    for path in candidates:
        if path and os.path.isdir(path) and any(f.endswith(".zip") or os.path.isdir(os.path.join(path, f))
                                                 for f in os.listdir(path)):
            return os.path.abspath(path)
    return None


@pytest.fixture(scope="session")
def omniglot_dir():
    path = _omniglot_dir()
    if path is None:
        reason = ("Omniglot data not found: set WARPGRAD_OMNIGLOT_DIR or place the official zips in "
                  "../shared/data/omniglot")
        if os.environ.get("WARPGRAD_REQUIRE_DATA") == "1":
            pytest.fail(reason + " (WARPGRAD_REQUIRE_DATA=1 forbids skipping).")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory, omniglot_dir):
    """A TFDS cache of ``omniglot_dir``'s images, decoded once for the whole session (every trainer or
    benchmark run given it as ``WARPGRAD_TFDS_DIR`` or ``cache_dir`` reads it instead of decoding again)."""
    path = str(tmp_path_factory.mktemp("tfds_omniglot"))
    from warpgrad_tf.data import omniglot as og

    og.load_images(omniglot_dir, cache_dir=path)
    return path


@pytest.fixture
def float64():
    """Run a test with Keras' float type *and* dtype policy set to float64 (for finite-difference checks).

    Keras 3 fixes its global dtype policy the first time a layer is built, after which ``set_floatx`` alone
    no longer changes new layers; so both are set here and both restored afterwards.
    """
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def nondeterministic_ops():
    """Run a test with TensorFlow op determinism off, restored afterwards.

    An in-process trainer run with ``train_eval.deterministic=True`` enables op determinism for the rest of the
    process, and XLA has no deterministic max-pool gradient ("GPU MaxPool gradient ops do not yet have a
    deterministic XLA implementation"), so the XLA tests would test that limitation instead of their property.
    """
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        yield
    finally:
        if was:
            tf_config.enable_op_determinism()
