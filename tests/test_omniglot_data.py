"""Omniglot data pipeline on the shared official zip (images_background_small1.zip: 5 alphabets)."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from warpgrad_tf.data import omniglot as og

ALPHABETS = ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]


def first_line(error):
    """The message without gin's "In call to configurable" suffix."""
    return str(error).split("\n")[0]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tasks(omniglot_dir, cache_dir):
    return og.OmniglotTasks(omniglot_dir, num_train_alphabets=3, num_val_alphabets=1, num_test_alphabets=1,
                            seed=0, cache_dir=cache_dir)


def make(omniglot_dir, cache_dir, **kwargs):
    args = dict(num_train_alphabets=3, num_val_alphabets=1, num_test_alphabets=1, seed=0)
    args.update(kwargs)
    return og.OmniglotTasks(omniglot_dir, cache_dir=cache_dir, **args)


# ------------------------------------------------------------------------------------------ images and tasks
def test_all_alphabets_found_and_cached_once(tasks, omniglot_dir, cache_dir):
    assert tasks.all_alphabets == ALPHABETS
    assert tasks.usable_alphabets == ALPHABETS  # all have >= 20 characters
    configs = os.listdir(os.path.join(cache_dir, "omniglot_alphabets"))
    assert len(configs) == 1 and configs[0].startswith("src_")
    images = og.load_images(omniglot_dir, cache_dir=cache_dir)  # reuses the cache
    assert os.listdir(os.path.join(cache_dir, "omniglot_alphabets")) == configs
    assert {a: len(c) for a, c in images.items()} == {
        "Balinese": 24, "Early_Aramaic": 22, "Greek": 24, "Korean": 40, "Latin": 26}
    drawings = images["Greek"]["character01"]
    assert drawings.shape == (20, 28, 28, 1) and drawings.dtype == np.uint8
    # Ink is 255 on a 0 background: most pixels are background, and there is ink.
    assert np.median(drawings) == 0 and drawings.max() == 255


def test_task_shapes_labels_and_ranges(tasks):
    task = tasks.task("Korean")
    assert task.alphabet == "Korean"
    assert len(task.characters) == 20 and len(set(task.characters)) == 20
    assert task.train_images.shape == (300, 28, 28, 1) and task.train_images.dtype == np.float32
    assert task.test_images.shape == (100, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(task.train_labels), [15] * 20)
    np.testing.assert_array_equal(np.bincount(task.test_labels), [5] * 20)
    assert task.train_labels.dtype == np.int32 and task.train_labels.min() == 0 and task.train_labels.max() == 19
    for x in (task.train_images, task.test_images):
        assert x.min() >= 0.0 and x.max() <= 1.0 and 0.02 < x.mean() < 0.3


def test_train_and_held_out_drawings_are_disjoint(tasks):
    task = tasks.task("Latin")
    for label in range(20):
        train = task.train_images[task.train_labels == label].reshape(15, -1)
        test = task.test_images[task.test_labels == label].reshape(5, -1)
        both = np.concatenate([train, test])
        assert len({row.tobytes() for row in both}) == 20  # 20 distinct drawings of one character


def test_split_is_disjoint_and_sized(tasks):
    split = tasks.split_alphabets
    assert [len(split[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert sorted(split["train"] + split["val"] + split["test"]) == ALPHABETS
    assert [t.alphabet for t in tasks.tasks("train")] == split["train"]


def test_determinism_by_seed(tasks, omniglot_dir, cache_dir):
    again = make(omniglot_dir, cache_dir)
    assert again.split_alphabets == tasks.split_alphabets
    a, b = tasks.task("Greek"), again.task("Greek")
    assert a.characters == b.characters
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_images, b.test_images)
    other = make(omniglot_dir, cache_dir, seed=1)
    assert other.task("Greek").characters != a.characters  # 20 of 24 characters: a new seed, a new choice
    splits = {tuple(t.split_alphabets["test"]) for t in (tasks, other)}
    splits |= {tuple(make(omniglot_dir, cache_dir, seed=s).split_alphabets["test"]) for s in (2, 3)}
    assert len(splits) > 1


def test_test_alphabets_do_not_depend_on_number_of_training_alphabets(tasks, omniglot_dir, cache_dir):
    fewer = make(omniglot_dir, cache_dir, num_train_alphabets=1)
    assert fewer.split_alphabets["test"] == tasks.split_alphabets["test"]
    assert fewer.split_alphabets["val"] == tasks.split_alphabets["val"]
    assert set(fewer.split_alphabets["train"]) < set(tasks.split_alphabets["train"])


def test_split_by_names(omniglot_dir, cache_dir):
    tasks = make(omniglot_dir, cache_dir, test_alphabets="Early_Aramaic,Greek", val_alphabets=["Latin"],
                 num_train_alphabets=2)
    assert tasks.split_alphabets["test"] == ["Early_Aramaic", "Greek"]
    assert tasks.split_alphabets["val"] == ["Latin"]
    assert sorted(tasks.split_alphabets["train"]) == ["Balinese", "Korean"]


# ------------------------------------------------------------------------------------------ augmentation
def test_affine_identity_and_quarter_turn_are_exact():
    x = tf.random.stateless_uniform([3, 28, 28, 1], seed=[1, 2])
    ones, zeros = tf.ones([3]), tf.zeros([3])
    same = og.affine_transform(x, ones, zeros, tf.zeros([3, 2]))
    np.testing.assert_allclose(same.numpy(), x.numpy(), atol=1e-6)
    quarter = og.affine_transform(x, ones, zeros + np.pi / 2, tf.zeros([3, 2]))
    np.testing.assert_allclose(quarter.numpy(), tf.image.rot90(x, k=3).numpy(), atol=1e-5)  # clockwise
    shifted = og.affine_transform(x, ones, zeros, tf.constant([[2.0, 0.0]] * 3))
    np.testing.assert_allclose(shifted.numpy()[:, :, 2:], x.numpy()[:, :, :-2], atol=1e-6)
    np.testing.assert_array_equal(shifted.numpy()[:, :, :2], 0.0)


def test_augmented_batches_are_deterministic_and_vary(tasks):
    task = tasks.task("Balinese")
    batches = task.batches(batch_size=64, seed=7)
    x0, y0 = batches(0)
    assert x0.shape == (64, 28, 28, 1) and y0.shape == (64,)
    x0_again, y0_again = task.batches(batch_size=64, seed=7)(tf.constant(0))
    np.testing.assert_array_equal(x0.numpy(), x0_again.numpy())
    np.testing.assert_array_equal(y0.numpy(), y0_again.numpy())
    x1, _ = batches(1)
    assert not np.allclose(x0.numpy(), x1.numpy())
    # The same examples without augmentation: augmentation really changes the images, keeps ink mostly.
    plain, plain_y = task.batches(batch_size=64, seed=7, augment=False)(0)
    np.testing.assert_array_equal(plain_y.numpy(), y0.numpy())
    diff = np.abs(plain.numpy() - x0.numpy()).reshape(64, -1).mean(axis=1)
    assert (diff > 0.01).mean() > 0.9
    ink = x0.numpy().reshape(64, -1).sum(1) / plain.numpy().reshape(64, -1).sum(1)
    assert 0.4 < np.median(ink) < 1.6
    assert x0.numpy().min() >= 0.0 and x0.numpy().max() <= 1.0 + 1e-6
    # A different seed gives different transforms of the same step.
    x_other, _ = task.batches(batch_size=64, seed=8)(0)
    assert not np.allclose(x_other.numpy(), x0.numpy())


def test_tf_data_pipeline_matches_batches(tasks):
    task = tasks.task("Greek")
    data = list(task.dataset(batch_size=32, steps=3, seed=5))
    assert len(data) == 3
    batches = task.batches(batch_size=32, seed=5)
    for k, (x, y) in enumerate(data):
        xk, yk = batches(k)
        np.testing.assert_allclose(x.numpy(), xk.numpy(), atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), yk.numpy())
    x_eval, y_eval = task.evaluation_set()
    np.testing.assert_array_equal(x_eval.numpy(), task.test_images)
    x_aug, _ = task.evaluation_set(augment=True, seed=1)
    assert not np.allclose(x_aug.numpy(), task.test_images)


# ------------------------------------------------------------------------------------------ folders
def _extract(zip_path, alphabet, dest):
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            if f"/{alphabet}/" in name and name.endswith(".png"):
                zf.extract(name, dest)


def test_extracted_folder_and_duplicates(omniglot_dir, cache_dir, tmp_path):
    zip_path = os.path.join(omniglot_dir, "images_background_small1.zip")
    _extract(zip_path, "Early_Aramaic", tmp_path / "extracted")
    folder = str(tmp_path / "extracted")  # holds images_background_small1/Early_Aramaic/...
    only = og.load_images(folder, cache_dir=cache_dir)
    assert list(only) == ["Early_Aramaic"]
    assert len(os.listdir(os.path.join(cache_dir, "omniglot_alphabets"))) >= 2  # its own cache entry
    from_zip = og.load_images(omniglot_dir, cache_dir=cache_dir)["Early_Aramaic"]
    for character, drawings in only["Early_Aramaic"].items():
        np.testing.assert_array_equal(drawings, from_zip[character])
    both = og.load_images(f"{omniglot_dir},{folder}", cache_dir=cache_dir)
    assert sorted(both) == ALPHABETS
    assert all(d.shape[0] == 20 for chars in both.values() for d in chars.values())  # no double counting


def _write_alphabet(root, alphabet, characters, drawings=20):
    for c in range(characters):
        cdir = root / alphabet / f"character{c + 1:02d}"
        cdir.mkdir(parents=True)
        for d in range(drawings):
            img = np.full((105, 105), 255, np.uint8)
            img[20 + c:60, 30 + d:40 + d] = 0
            Image.fromarray(img).save(cdir / f"{c:04d}_{d:02d}.png")


def test_small_alphabets_are_dropped(tmp_path, cache_dir):
    _write_alphabet(tmp_path / "images_tiny", "Tiny", characters=3)
    with pytest.raises(og.OmniglotDataError) as e:
        og.OmniglotTasks(str(tmp_path), num_train_alphabets=1, num_val_alphabets=0, num_test_alphabets=0,
                         cache_dir=cache_dir)
    assert "only 0 more usable alphabets" in first_line(e.value)
    with pytest.raises(og.OmniglotDataError) as e:
        og.OmniglotTasks(str(tmp_path), train_alphabets=["Tiny"], num_val_alphabets=0, num_test_alphabets=0,
                         cache_dir=cache_dir)
    assert "'Tiny'" in first_line(e.value) and "fewer than 20 characters" in first_line(e.value)
    tasks = og.OmniglotTasks(str(tmp_path), num_train_alphabets=0, num_val_alphabets=0, num_test_alphabets=0,
                             num_classes=3, num_train_images=15, cache_dir=cache_dir)
    assert tasks.usable_alphabets == ["Tiny"]
    assert tasks.task("Tiny").train_images.shape == (45, 28, 28, 1)


# ------------------------------------------------------------------------------------------ bad input
def test_no_data(tmp_path, cache_dir):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(og.OmniglotNotFoundError) as e:
        og.OmniglotTasks(str(tmp_path), cache_dir=cache_dir)
    assert str(tmp_path) in first_line(e.value) and "No Omniglot zips" in first_line(e.value)
    with pytest.raises(FileNotFoundError) as e:
        og.find_sources(str(tmp_path / "missing"))
    assert "missing" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="data_dir is not set"):
        og.find_sources("")


def test_unknown_alphabet(omniglot_dir, cache_dir):
    with pytest.raises(og.OmniglotDataError) as e:
        make(omniglot_dir, cache_dir, test_alphabets=["Klingon"])
    assert "'Klingon'" in first_line(e.value) and "test_alphabets" in first_line(e.value)
    with pytest.raises(og.OmniglotDataError, match="both"):
        make(omniglot_dir, cache_dir, test_alphabets=["Greek"], val_alphabets=["Greek"])


def test_too_few_alphabets(omniglot_dir, cache_dir):
    with pytest.raises(og.OmniglotDataError) as e:
        make(omniglot_dir, cache_dir, num_train_alphabets=25, num_val_alphabets=10, num_test_alphabets=10)
    message = first_line(e.value)
    assert "25 train" in message and "only 5" in message and omniglot_dir in message


def test_corrupt_zips(omniglot_dir, tmp_path, cache_dir):
    bad = tmp_path / "images_background.zip"
    bad.write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(og.OmniglotDataError) as e:
        og.OmniglotTasks(str(tmp_path), cache_dir=cache_dir)
    assert str(bad) in first_line(e.value) and "Corrupt" in first_line(e.value)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = open(os.path.join(omniglot_dir, "images_background_small1.zip"), "rb").read()
    (truncated / "images_background_small1.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(og.OmniglotDataError) as e:
        og.load_images(str(truncated), cache_dir=cache_dir)
    assert "images_background_small1.zip" in str(e.value) and "\n" not in str(e.value)

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    with zipfile.ZipFile(unrelated / "photos.zip", "w") as zf:
        zf.writestr("readme.txt", "no images")
    with pytest.raises(og.OmniglotDataError, match="photos.zip.*no Omniglot images"):
        og.load_images(str(unrelated), cache_dir=cache_dir)


def test_corrupt_image_is_named(tmp_path, cache_dir):
    _write_alphabet(tmp_path / "images_x", "Broken", characters=1, drawings=2)
    bad = tmp_path / "images_x" / "Broken" / "character01" / "0000_01.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(og.OmniglotDataError) as e:
        og.load_images(str(tmp_path), cache_dir=cache_dir)
    assert "0000_01.png" in str(e.value) and "\n" not in str(e.value)
