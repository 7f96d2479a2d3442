"""Multi-shot tieredImageNet (App. H) through the multi-shot trainer, on generated images in the standard format.

The fixture writes ``{train,val,test}_images_png.pkl`` (PNG bytes as uint8 arrays) and ``{split}_labels.pkl``
(``label_specific``, ``label_specific_str``), as Ren et al.'s release. Every image stores its identity in two
pixels — ``[0, 0, 0]`` the class (unique across splits) and ``[0, 1, 0]`` its index in the class — so a task's
composition is checked, not just its shape. The trainer runs ``configs/tieredimagenet_multishot/warp_leap.gin``
itself with only the sizes shrunk (3-way 3-shot, 32×32 images, the six-block learner with 2–4 filters).
"""

import io
import json
import os
import pickle

import gin
import keras
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.helpers import checkpoint_values
from trainers.task_sources import MultiShotSource
from warpgrad_tf.data import fewshot as fs
from warpgrad_tf.models import fewshot_convnet

SIZE = 32
CLASSES = {"train": 4, "val": 3, "test": 3}
PER_CLASS = 6
TINY = ["MultiShotTasks.ways = 3", "MultiShotTasks.shots = 3", "MultiShotTasks.queries = 2",
        "MultiShotTasks.num_val_tasks = 1", "MultiShotTasks.num_test_tasks = 1", f"MultiShotTasks.image_size = {SIZE}",
        "fewshot_convnet.filters = [2, 2, 3, 3, 4, 4]", "train_eval.inner_steps = 2", "train_eval.task_batch_size = 4",
        "train_eval.meta_batch_size = 2", "train_eval.meta_steps = 1", "train_eval.eval_steps = 1",
        "train_eval.eval_every = 1", "train_eval.checkpoint_every = 1", "train_eval.warp_lr = 0.05",
        "train_eval.init_lr = 0.05"]


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), np.uint8)


def write_tiered(root):
    start = 0
    for split, n in CLASSES.items():
        images, labels = [], []
        for i in range(PER_CLASS):
            for k in range(n):
                img = np.random.default_rng([start + k, i]).integers(100, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                img[0, 0, 0], img[0, 1, 0] = start + k, i
                images.append(_png(img))
                labels.append(k)
        with open(os.path.join(root, f"{split}_images_png.pkl"), "wb") as f:
            pickle.dump(images, f, protocol=2)
        with open(os.path.join(root, f"{split}_labels.pkl"), "wb") as f:
            pickle.dump({"label_specific": np.asarray(labels), "label_general": np.zeros(len(labels), int),
                         "label_specific_str": [f"n{c:08d}" for c in range(start, start + n)]}, f, protocol=2)
        start += n
    return str(root)


@pytest.fixture
def tiered(tmp_path):
    os.makedirs(tmp_path / "tiered")
    return write_tiered(tmp_path / "tiered")


def _config(method):
    return os.path.join(REPO, "configs", "tieredimagenet_multishot", f"{method}.gin")


def _train(root, data_dir, extra=()):
    from trainers import omniglot as trainer

    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([_config("warp_leap")], TINY + list(extra), finalize_config=False)
        return trainer.main.run(str(root), data_dir=data_dir)
    finally:
        gin.clear_config()


def test_multishot_tasks_hold_the_drawn_classes(tiered):
    data = fs.MultiShotTasks(tiered, ways=3, shots=3, queries=2, num_val_tasks=2, num_test_tasks=1, image_size=SIZE)
    assert data.num_classes == 3 and data.image_shape == (SIZE, SIZE, 3)
    assert [t.name for t in data.tasks("val")] == ["val/0", "val/1"] and len(data.tasks("test")) == 1
    task = data.task("train", 7)
    assert task.train_images.shape == (9, SIZE, SIZE, 3) and task.test_images.shape == (6, SIZE, SIZE, 3)
    ids = lambda x: (np.rint(x[:, 0, 0, 0] * 255).astype(int), np.rint(x[:, 0, 1, 0] * 255).astype(int))  # noqa: E731
    (tc, ti), (qc, qi) = ids(task.train_images), ids(task.test_images)
    for label in range(3):  # one train-split class per label, named as in the labels file; no image twice
        cls = set(tc[task.train_labels == label]) | set(qc[task.test_labels == label])
        assert len(cls) == 1 and cls.pop() < CLASSES["train"]
        assert task.classes[label] == f"n{tc[task.train_labels == label][0]:08d}"
    assert len(set(tc)) == 3
    assert len(set(zip(tc, ti)) | set(zip(qc, qi))) == 15
    again = data.task("train", 7)
    np.testing.assert_array_equal(again.train_images, task.train_images)
    other = data.task("train", 8)
    assert not np.array_equal(other.train_images, task.train_images)
    vc, _ = ids(data.tasks("val")[0].train_images)
    assert set(vc) <= set(range(CLASSES["train"], CLASSES["train"] + CLASSES["val"]))


def test_one_meta_step_end_to_end(tiered, tmp_path):
    root = tmp_path / "run"
    results = _train(root, tiered)
    assert results["task"] == "multishot/tieredimagenet" and results["source"] == "fewshot"
    assert (results["method"], results["algorithm"], results["objective"]) == ("warp_leap", "online", "exact")
    assert (results["inner_rule"], results["meta_steps"], results["inner_steps"]) == ("momentum", 1, 2)
    assert results["tasks"]["test"] == ["test/0"] and results["validation"] == "val tasks"
    assert 0.0 <= results["held_out_accuracy"]["mean"] <= 1.0
    assert np.isfinite(results["last_train_metrics"]["task_loss_last"])
    saved = json.loads((root / "results.json").read_text())
    assert saved["held_out_accuracy"]["mean"] == results["held_out_accuracy"]["mean"]

    # the saved learner is App. H's six-block network, and the meta-step moved both θ0 and the warps φ
    model = keras.saving.load_model(root / "model" / "model.keras", compile=False)
    convs = [model.get_layer(f"conv{i}") for i in range(1, 7)]
    assert [c.filters for c in convs] == [2, 2, 3, 3, 4, 4]
    assert [layer.name for layer in model.layers if layer.name.startswith("pool")] == [f"pool{i}" for i in range(1, 6)]
    assert model.output_shape == (None, 3)
    assert [layer.name for layer in model.layers if layer.name.startswith("warp")] == ["warp4", "warp5", "warp6"]
    gin.clear_config()
    keras.utils.set_random_seed(0)  # the trainer's seed: the initial θ0 and φ, variable for variable
    initial = fewshot_convnet(num_classes=3, filters=[2, 2, 3, 3, 4, 4], num_blocks=6, pool_blocks=[1, 2, 3, 4, 5],
                              image_size=SIZE)
    _, values = checkpoint_values(root, ["model/"])  # the latest checkpoint (the saved model is the best: step 0)
    moved = {v.path: float(np.abs(values[f"model/{i}/.ATTRIBUTES/VARIABLE_VALUE"] - v.numpy()).max())
             for i, v in enumerate(initial.variables)}
    assert moved["warp6/map_0/kernel"] > 0 and moved["conv1/kernel"] > 0 and moved["head/kernel"] > 0, moved
    assert moved["bn1/moving_mean"] == 0  # meta-training threads BatchNorm statistics, never assigns them


def _first_line(error):
    """What the trainer's command prints (``error: <line one>``; gin appends "In call to configurable" lines)."""
    return str(error).strip().splitlines()[0]


def test_missing_and_corrupt_files_are_one_line_errors_naming_them(tiered, tmp_path):
    os.remove(os.path.join(tiered, "val_images_png.pkl"))
    with pytest.raises(fs.FewShotNotFoundError) as e:
        _train(tmp_path / "missing", tiered)
    assert _first_line(e.value).startswith("Missing few-shot file") and "val_images_png.pkl'." in _first_line(e.value)

    with open(os.path.join(tiered, "val_images_png.pkl"), "wb") as f:
        f.write(b"\x80\x02not a pickle")
    with pytest.raises(fs.FewShotDataError) as e:
        _train(tmp_path / "corrupt", tiered)
    assert _first_line(e.value).startswith("Corrupt or unreadable pickle") and "val_images_png.pkl" in _first_line(
        e.value)

    # a pickle that loads but holds images that are not PNGs: named when a task reads them
    with open(os.path.join(tiered, "val_images_png.pkl"), "wb") as f:
        pickle.dump([np.frombuffer(b"garbage", np.uint8)] * (CLASSES["val"] * PER_CLASS), f, protocol=2)
    data = fs.MultiShotTasks(tiered, ways=3, shots=3, queries=2, num_val_tasks=1, num_test_tasks=1, image_size=SIZE)
    with pytest.raises(fs.FewShotDataError) as e:
        data.tasks("val")[0]
    assert "Cannot decode image" in str(e.value) and "val_images_png.pkl" in str(e.value)
    assert len(str(e.value).strip().splitlines()) == 1


@pytest.mark.parametrize("method", ["warp_leap", "leap", "reptile", "sgd"])
def test_every_gin_file_parses_to_app_h_settings(method):
    from trainers import omniglot as trainer

    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([_config(method)], [], finalize_config=False)
        q = lambda name: gin.query_parameter(f"train_eval.{name}")  # noqa: E731
        assert q("preset") in trainer.MULTISHOT_PRESETS and q("preset").endswith(method) and q("method") == method
        assert (q("tasks").configurable.wrapped, q("inner_rule"), q("inner_steps"), q("meta_batch_size")) == (
            MultiShotSource, "momentum", 100, 5)
        assert q("task_batch_size") == (256 if method == "sgd" else 64)
        assert q("meta_steps") == (0 if method == "sgd" else 2000)
        assert gin.query_parameter("fewshot_convnet.filters") == [64, 64, 160, 160, 256, 256]
        assert (gin.query_parameter("MultiShotTasks.ways"), gin.query_parameter("MultiShotTasks.shots"),
                gin.query_parameter("MultiShotTasks.queries")) == (10, 640, 50)
    finally:
        gin.clear_config()
