"""Omniglot protocols by name (warpgrad_tf/data/omniglot_protocol.py, docs/protocol.md).

Held-out drawings augmented at evaluation and keyed by the evaluation seed; the authors' 1-bit nearest-neighbour
image format against a reference computed here from the PNGs; the per-task head reset; the protocol's name in
results.json and the exported model; one-line errors. A 4-filter learner and synthetic images keep the
evaluator tests to seconds; the image-format test decodes the 5-alphabet subset once (a few seconds).
"""

import io
import json
import zipfile

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import warpgrad_tf as wg
from trainers import omniglot as trainer
from warpgrad_tf.data import omniglot as og
from warpgrad_tf.data import omniglot_protocol as protocols
from warpgrad_tf.models import omniglot_convnet

CLASSES = 5


def _learner():
    keras.utils.set_random_seed(3)
    return wg.WarpedModel(omniglot_convnet(num_classes=CLASSES, filters=4, warp=None))


def _drawings(n, seed):
    """Sparse strokes on a blank background, so an affine map moves them."""
    x = np.zeros((n, 28, 28, 1), np.float32)
    rng = np.random.default_rng(seed)
    for i in range(n):
        r, c = rng.integers(6, 22, size=2)
        x[i, r - 4:r + 4, c] = 1.0
        x[i, r, c - 3:c + 3] = 1.0
    return x


def _logit_readout(y, logits):
    return tf.reduce_sum(logits * tf.range(1.0, CLASSES + 1.0))  # a continuous score of every held-out logit


def _score(protocol, seed, fresh_head=False, task=0, steps=0):
    warped = _learner()
    evaluator = trainer.make_evaluator(warped, wg.update_rules.get("sgd", 0.1), steps, 8, True, "running",
                                       metric=_logit_readout, protocol=protocol, fresh_head=fresh_head)
    tx, ex = _drawings(4 * CLASSES, 0), _drawings(2 * CLASSES, 1)
    ty = (np.arange(4 * CLASSES) % CLASSES).astype(np.int32)
    ey = (np.arange(2 * CLASSES) % CLASSES).astype(np.int32)
    _, test = evaluator(warped.values("task"), warped.values("warp"), tx, ty, ex, ey, tf.constant(seed, tf.int64),
                        tf.constant(task, tf.int64))
    return test.numpy()


def test_authors_protocol_scores_freshly_augmented_held_out_drawings_keyed_by_the_eval_seed():
    authors = protocols.get("authors")
    a, again, b = _score(authors, 11), _score(authors, 11), _score(authors, 12)
    np.testing.assert_array_equal(a, again)  # same evaluation seed, same transformed drawings
    assert not np.allclose(a[0], b[0])  # step 0 (no adaptation): only the held-out transforms differ
    # without held-out augmentation the step-0 score does not depend on the seed
    smooth = protocols.get("smooth")
    np.testing.assert_array_equal(_score(smooth, 11)[0], _score(smooth, 12)[0])
    held = authors.held_out(tf.constant(_drawings(3, 1)), tf.constant(11, tf.int64)).numpy()
    assert not np.array_equal(held, _drawings(3, 1)) and set(np.unique(held)) <= {0.0, 1.0}  # nearest: no grey


def test_head_reset_keeps_a_meta_learned_head_and_gives_a_baseline_a_fresh_head_per_task():
    for name in ("paper", "authors"):
        p = protocols.get(name)
        assert not p.resets_head("warp_leap") and not p.resets_head("warp_leap_approx")
        assert p.resets_head("sgd") and p.resets_head("finetune")
    assert not protocols.get("paper").resets_head("leap")  # the paper: Leap's head is meta-learned
    assert protocols.get("authors").resets_head("leap")  # the release resets it (model.py init_adaptation)
    paper = protocols.get("smooth")  # no held-out augmentation: only the head moves the step-0 score
    kept = _score(paper, 5)[0]
    fresh = [_score(paper, 5, fresh_head=True, task=t)[0] for t in (0, 1)]
    assert kept != fresh[0] and fresh[0] != fresh[1]  # a fresh head, another for the next task
    assert _score(paper, 5, fresh_head=True, task=1)[0] == fresh[1]  # reproducible
    theta = _learner().values("task")
    new = wg.algorithms.multihead.fresh_head(theta, tf.constant(5, tf.int64))
    for k, v in theta.items():
        if k.startswith("head/"):
            bound = 1.0 / np.sqrt(theta["head/kernel"].shape[0])
            assert not np.allclose(new[k], v) and np.abs(new[k].numpy()).max() <= bound
        else:
            np.testing.assert_array_equal(new[k], v)


def test_authors_meta_training_starts_every_baseline_task_from_a_fresh_head():
    authors, paper = protocols.get("authors"), protocols.get("paper")
    assert all(authors.resets_head_in_meta_training(m) for m in ("leap", "reptile", "fomaml"))
    assert not any(authors.resets_head_in_meta_training(m) for m in ("warp_leap", "warp_leap_approx", "maml"))
    assert not any(paper.resets_head_in_meta_training(m) for m in ("leap", "sgd", "finetune"))
    warped = _learner()
    rule, loss = wg.update_rules.get("sgd", 0.1), wg.losses.softmax_cross_entropy
    plain = wg.algorithms.meta_learner(rule, loss, 3, init="leap", objective=None, batch_size=8)
    reset = plain._replace(task_start=wg.algorithms.multihead.fresh_head)
    x = np.stack([_drawings(4 * CLASSES, 0), _drawings(4 * CLASSES, 2)])
    y = np.tile((np.arange(4 * CLASSES) % CLASSES).astype(np.int32), (2, 1))
    tasks = wg.algorithms.Tasks(x, y, x, y)
    theta0, warp = warped.values("task"), warped.values("warp")
    seeds = tf.constant([11, 12], tf.int64)

    def run(learner, start, i):
        return wg.algorithms.run_task(warped, learner, warp, start, tuple(t[i] for t in tasks), seeds[i])

    for i in (0, 1):  # the reset learner from θ0 == the plain learner from θ0 with the task's fresh head
        got, want = run(reset, theta0, i), run(plain, wg.algorithms.multihead.fresh_head(theta0, seeds[i]), i)
        np.testing.assert_array_equal(got.losses, want.losses)
        for k in theta0:
            np.testing.assert_array_equal(got.init.grads[k], want.init.grads[k])
    assert not np.array_equal(run(reset, theta0, 0).losses, run(plain, theta0, 0).losses)
    online = wg.algorithms.online.online_meta_gradient_sums  # the vectorised meta-batch starts from the same heads
    one_by_one = online(warped, reset, warp, theta0, tasks, seeds)
    side_by_side = online(warped, reset._replace(vectorize=True), warp, theta0, tasks, seeds)
    for k in theta0:
        np.testing.assert_allclose(side_by_side.init[k], one_by_one.init[k], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def binary_tasks(omniglot_dir, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("tfds_binary"))
    return og.OmniglotTasks(omniglot_dir, cache_dir=cache, images="binary", background="white",
                            train_alphabets=["Greek"], val_alphabets=[], test_alphabets=["Latin"])


def test_authors_image_format_is_the_1bit_nearest_neighbour_reference(binary_tasks, omniglot_dir):
    task = binary_tasks.task("Greek")
    zf = zipfile.ZipFile(og.find_sources(omniglot_dir)[0].path)
    names = sorted(n for n in zf.namelist() if f"/Greek/{task.characters[0]}/" in n and n.endswith(".png"))
    idx = np.floor((np.arange(28) + 0.5) * 105 / 28).astype(int)  # nearest-neighbour centres, 105 -> 28
    references = []
    for name in names:
        pixels = np.asarray(Image.open(io.BytesIO(zf.read(name))).convert("L")) > 127  # True: white background
        references.append(pixels[idx][:, idx].astype(np.float32))
    images = np.concatenate([task.train_images[task.train_labels == 0], task.test_images[task.test_labels == 0]])
    assert len(images) == 20 and set(np.unique(images)) == {0.0, 1.0}
    for image in images[:, :, :, 0]:  # each stored drawing is exactly one reference (the held-out order is seeded)
        assert any(np.array_equal(image, ref) for ref in references)
    assert images.mean() > 0.5  # white background, ink 0 (torchvision's reading of the release's files)


def _run(tmp_path, data_dir, cache, params):
    gin.clear_config()
    gin.parse_config([f"train_eval.{p}" if not p.startswith(("Omniglot", "omniglot")) else p for p in params]
                     + [f"OmniglotTasks.cache_dir = '{cache}'"])
    try:
        return trainer.main.run(str(tmp_path), data_dir=data_dir)
    finally:
        gin.clear_config()


TINY = ["method = 'sgd'", "meta_steps = 0", "eval_steps = 1", "task_batch_size = 8", "omniglot_convnet.filters = 4",
        "OmniglotTasks.train_alphabets = []", "OmniglotTasks.val_alphabets = []",
        "OmniglotTasks.test_alphabets = ['Early_Aramaic']"]


def test_protocol_name_lands_in_results_and_the_exported_model(tmp_path, omniglot_dir, omniglot_cache):
    results = _run(tmp_path, omniglot_dir, omniglot_cache, TINY + ["protocol = 'authors'", "task_batch_scale = 2",
                                                                   "inner_lr_scale = 10"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["protocol"] == results["protocol"] == "authors"
    assert saved["protocol_settings"]["images"] == "binary" and saved["fresh_head"] is True
    assert (saved["task_batch_size"], saved["inner_lr"]) == (16, pytest.approx(1.0))
    assert json.loads((tmp_path / "model" / "warpgrad.json").read_text())["extra"]["protocol"] == "authors"


def test_bad_protocol_input_is_one_line(tmp_path, omniglot_dir, omniglot_cache):
    with pytest.raises(ValueError, match=r"^Unknown Omniglot protocol 'paperr' \(train_eval.protocol\); choose "
                                         r"one of \['paper', 'authors', [^\n]*\]\.$"):  # one line
        _run(tmp_path, omniglot_dir, omniglot_cache, TINY + ["protocol = 'paperr'"])
    with pytest.raises(ValueError, match=r"^Protocol 'paper' augments the held-out drawings at evaluation, but "
                                         r"train_eval.augment=False[^\n]*\.$"):
        _run(tmp_path, omniglot_dir, omniglot_cache, TINY + ["augment = False"])
    with pytest.raises(ValueError, match="train_eval.task_batch_scale must be > 0; got 0"):
        _run(tmp_path, omniglot_dir, omniglot_cache, TINY + ["task_batch_scale = 0"])
    with pytest.raises(ValueError, match="Protocol 'x': unknown images 'jpeg'"):
        protocols.Protocol("x", images="jpeg")


def test_the_few_shot_source_keeps_batch_norm_head_and_selection_but_not_held_out_augmentation():
    paper = protocols.get("paper")
    assert paper.for_source("omniglot") is paper
    fewshot = protocols.get("authors").for_source("fewshot")
    assert not fewshot.augment_held_out and fewshot.resets_head("leap") and fewshot.model_selection == "last"
    fewshot.check(augment=False)  # App. H's presets run without augmentation
    with pytest.raises(ValueError, match="augments the held-out drawings"):
        paper.check(augment=False)
