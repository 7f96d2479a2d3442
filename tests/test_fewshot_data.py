"""Few-shot episodes (warpgrad_tf/data/fewshot.py) from fixtures written here in each release format.

Every fixture image stores its identity in two pixels — ``[0, 0, 0]`` the class (unique across splits) and
``[0, 1, 0]`` the image within the class — so episodes can be checked for composition, not just shape.
"""

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from warpgrad_tf.data import fewshot as fs

SIZE = 16
CLASSES = {"train": 7, "val": 5, "test": 6}
PER_CLASS = 9


def _image(cls, idx, channels=3):
    rng = np.random.default_rng([cls, idx])
    img = rng.integers(100, 256, size=(SIZE, SIZE, channels), dtype=np.uint8)
    img[0, 0, 0], img[0, 1, 0] = cls, idx
    return img


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


def _class_ids():
    start, out = 0, {}
    for split, n in CLASSES.items():
        out[split] = list(range(start, start + n))
        start += n
    return out


def write_mini_pickles(root):
    """``mini-imagenet-cache-{split}.pkl`` with rows shuffled so class_dict indexing is exercised."""
    for split, ids in _class_ids().items():
        items = [(c, i) for c in ids for i in range(PER_CLASS)]
        order = np.random.default_rng(len(ids)).permutation(len(items))
        rows = [items[j] for j in order]
        data = {"image_data": np.stack([_image(c, i) for c, i in rows]),
                "class_dict": {f"n{c:08d}": [r for r, (cc, _) in enumerate(rows) if cc == c] for c in ids}}
        with open(os.path.join(root, f"mini-imagenet-cache-{split}.pkl"), "wb") as f:
            pickle.dump(data, f, protocol=2)
    return str(root)


def write_tiered_pickles(root):
    """``{split}_images_png.pkl`` (PNG bytes as uint8 arrays) + ``{split}_labels.pkl``."""
    for split, ids in _class_ids().items():
        images, labels = [], []
        for i in range(PER_CLASS):
            for k, c in enumerate(ids):
                images.append(np.frombuffer(_png(_image(c, i)), np.uint8))
                labels.append(k)
        with open(os.path.join(root, f"{split}_images_png.pkl"), "wb") as f:
            pickle.dump(images, f, protocol=2)
        with open(os.path.join(root, f"{split}_labels.pkl"), "wb") as f:
            pickle.dump({"label_specific": np.asarray(labels), "label_general": np.zeros(len(labels), int),
                         "label_specific_str": [f"n{c:08d}" for c in ids]}, f, protocol=2)
    return str(root)


def write_folders(root):
    for split, ids in _class_ids().items():
        for c in ids:
            d = os.path.join(root, split, f"n{c:08d}")
            os.makedirs(d)
            for i in range(PER_CLASS):
                with open(os.path.join(d, f"{i:03d}.png"), "wb") as f:
                    f.write(_png(_image(c, i)))
    return str(root)


WRITERS = {"mini_pickle": ("miniimagenet", write_mini_pickles), "tiered_pickle": ("tieredimagenet",
                                                                                    write_tiered_pickles),
           "folders": ("miniimagenet", write_folders)}


def _ids(x):
    px = np.rint(np.asarray(x)[..., 0, :2, 0] * 255).astype(int)
    return px[..., 0], px[..., 1]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_release_formats_give_correct_disjoint_episodes(fmt, tmp_path):
    dataset, write = WRITERS[fmt]
    data_dir = write(tmp_path)
    eps = fs.FewShotEpisodes(data_dir, dataset, ways=5, shots=2, queries=3, seed=1, image_size=SIZE)
    assert eps.data_format == fmt
    assert {s: len(eps.classes(s).names) for s in fs.SPLITS} == CLASSES
    names = [set(eps.classes(s).names) for s in fs.SPLITS]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    ids = _class_ids()
    for split in fs.SPLITS:
        for ep in eps.as_dataset(split, 4):
            assert ep.support_x.shape == (10, SIZE, SIZE, 3) and ep.query_x.shape == (15, SIZE, SIZE, 3)
            np.testing.assert_array_equal(ep.support_y, np.repeat(np.arange(5), 2))
            np.testing.assert_array_equal(ep.query_y, np.repeat(np.arange(5), 3))
            s_cls, s_img = _ids(ep.support_x)
            q_cls, q_img = _ids(ep.query_x)
            assert set(s_cls) <= set(ids[split]) and len(set(s_cls)) == 5  # N distinct classes of this split
            for label in range(5):  # one class per label; K + L distinct images of it
                cls = set(s_cls[ep.support_y.numpy() == label]) | set(q_cls[ep.query_y.numpy() == label])
                assert len(cls) == 1
                imgs = list(s_img[ep.support_y.numpy() == label]) + list(q_img[ep.query_y.numpy() == label])
                assert len(set(imgs)) == 5
            # the decoded image equals the written one (no resize, no channel mix-up)
            np.testing.assert_allclose(ep.support_x[0].numpy(), _image(s_cls[0], s_img[0]) / 255.0, atol=1e-6)


def test_episodes_are_deterministic_by_seed(tmp_path):
    data_dir = write_mini_pickles(tmp_path)
    a = fs.FewShotEpisodes(data_dir, "miniimagenet", 5, 1, 2, seed=3)
    b = fs.FewShotEpisodes(data_dir, "miniimagenet", 5, 1, 2, seed=3)
    c = fs.FewShotEpisodes(data_dir, "miniimagenet", 5, 1, 2, seed=4)
    batch_a = [e for e in a.as_dataset("train", 6, batch_size=3)]
    batch_b = [e for e in b.as_dataset("train", 6, batch_size=3)]
    for x, y in zip(batch_a, batch_b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert batch_a[0].support_x.shape == (3, 5, SIZE, SIZE, 3)
    # an episode is a function of (seed, number): a shifted start gives the same episodes
    late = next(iter(a.as_dataset("train", 1, start=4)))
    np.testing.assert_array_equal(late.query_x, batch_a[1].query_x[1])
    other = [e.classes.numpy().tolist() for e in c.as_dataset("train", 6)]
    mine = [e.classes.numpy().tolist() for e in a.as_dataset("train", 6)]
    assert other != mine
    assert len({tuple(m) for m in mine}) > 1  # episodes differ from each other


def test_omniglot_characters_of_held_out_alphabets(omniglot_dir, tmp_path):
    eps = fs.FewShotEpisodes(omniglot_dir, "omniglot", 5, 1, 5, seed=0, cache_dir=str(tmp_path),
                             test_alphabets=["Early_Aramaic"], val_alphabets=["Greek"])
    assert eps.alphabets["test"] == ["Early_Aramaic"] and eps.alphabets["val"] == ["Greek"]
    assert sorted(eps.alphabets["train"]) == ["Balinese", "Korean", "Latin"]
    test_names = eps.classes("test").names
    assert len(test_names) == 22 and all(n.startswith("Early_Aramaic/") for n in test_names)
    train_names = eps.classes("train").names
    assert not any(n.startswith(("Early_Aramaic/", "Greek/")) for n in train_names)
    ep = eps.episode("test", 0)
    assert ep.support_x.shape == (5, 28, 28, 1) and ep.query_x.shape == (25, 28, 28, 1)
    assert 0.0 <= float(ep.support_x.numpy().min()) and float(ep.support_x.numpy().max()) <= 1.0
    # rotations: four classes per character, images of a rotated class are the rotated drawings
    rot = fs.FewShotEpisodes(omniglot_dir, "omniglot", 5, 1, 5, seed=0, cache_dir=str(tmp_path), rotations=True,
                             test_alphabets=["Early_Aramaic"], val_alphabets=["Greek"], splits=("test",))
    cs = rot.classes("test")
    assert len(cs.names) == 4 * 22 and cs.names[1].endswith("@90")
    plain = cs.store.fetch(np.arange(cs.offsets[0], cs.offsets[0] + 1))
    for ep in rot.as_dataset("test", 30):
        if 1 in ep.classes.numpy().tolist():  # character 0 at 90°
            label = ep.classes.numpy().tolist().index(1)
            drawn = np.rint(ep.support_x.numpy()[label] * 255).astype(np.uint8)
            candidates = [np.rot90(cs.store.fetch([cs.offsets[0] + j])[0], 1) for j in range(cs.counts[0])]
            assert any(np.array_equal(drawn, c) for c in candidates)
            break
    else:
        pytest.fail("class 1 never drawn in 30 episodes")
    assert plain.shape == (1, 28, 28, 1)
    # the automatic split also keeps alphabets whole and disjoint
    auto = fs.FewShotEpisodes(omniglot_dir, "omniglot", 5, 1, 5, seed=2, cache_dir=str(tmp_path),
                              num_val_alphabets=1, num_test_alphabets=1)
    groups = [set(auto.alphabets[s]) for s in fs.SPLITS]
    assert sum(len(g) for g in groups) == 5 and len(set.union(*groups)) == 5


def test_errors_name_the_file(tmp_path):
    with pytest.raises(fs.FewShotNotFoundError, match="mini-imagenet-cache"):
        fs.FewShotEpisodes(str(tmp_path), "miniimagenet")
    os.makedirs(tmp_path / "m")
    data_dir = write_mini_pickles(tmp_path / "m")
    os.remove(os.path.join(data_dir, "mini-imagenet-cache-val.pkl"))
    with pytest.raises(fs.FewShotNotFoundError, match="mini-imagenet-cache-val.pkl"):
        fs.FewShotEpisodes(data_dir, "miniimagenet", 5, 1, 2)
    with open(os.path.join(data_dir, "mini-imagenet-cache-val.pkl"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(fs.FewShotDataError, match="mini-imagenet-cache-val.pkl"):
        fs.FewShotEpisodes(data_dir, "miniimagenet", 5, 1, 2)
    # a class in two splits
    os.makedirs(tmp_path / "f")
    folders = write_folders(tmp_path / "f")
    os.rename(os.path.join(folders, "val", f"n{7:08d}"), os.path.join(folders, "val", f"n{0:08d}"))
    with pytest.raises(fs.FewShotDataError, match="both the train and val"):
        fs.FewShotEpisodes(folders, "miniimagenet", 5, 1, 2, image_size=SIZE)
    # too few images per class for K + L, too few classes for N
    with pytest.raises(fs.FewShotDataError, match="need 10 images per class"):
        fs.FewShotEpisodes(folders, "tieredimagenet", 5, 5, 5, image_size=SIZE, splits=("train",))
    with pytest.raises(fs.FewShotDataError, match="8-way episodes need 8 classes"):
        fs.FewShotEpisodes(folders, "tieredimagenet", 8, 1, 1, image_size=SIZE, splits=("val",))
    # tiered: labels and images disagree
    os.makedirs(tmp_path / "t")
    tiered = write_tiered_pickles(tmp_path / "t")
    with open(os.path.join(tiered, "test_labels.pkl"), "wb") as f:
        pickle.dump({"label_specific": np.zeros(3, int)}, f)
    with pytest.raises(fs.FewShotDataError, match="test_images_png.pkl"):
        fs.FewShotEpisodes(tiered, "tieredimagenet", 5, 1, 2, image_size=SIZE)
    with pytest.raises(fs.FewShotDataError, match="ways must be an int >= 1"):
        fs.FewShotEpisodes(tiered, "tieredimagenet", 0)
