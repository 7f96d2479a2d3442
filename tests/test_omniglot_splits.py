"""The Omniglot split files (configs/omniglot/splits/*.gin): disjoint alphabets that exist in their data.

Only zip listings are read (no image is decoded), so the module takes about a second. The background-set
check reads ``../shared/data/omniglot-full`` (or ``$WARPGRAD_OMNIGLOT_FULL_DIR``) and skips where it is absent,
unless ``WARPGRAD_REQUIRE_DATA=1``.
"""

import collections
import glob
import os

import gin
import pytest

from tests.conftest import REPO
from warpgrad_tf.data import omniglot as og

SPLIT_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "omniglot", "splits", "*.gin")))


def split_of(path):
    """``{split: [alphabet, ...]}`` bound by one split file."""
    gin.clear_config()
    try:
        gin.parse_config_file(path)
        return {s: list(gin.query_parameter(f"OmniglotTasks.{s}_alphabets")) for s in og.SPLITS}
    finally:
        gin.clear_config()


def characters_per_alphabet(data_dir, only=None):
    counts = collections.defaultdict(set)
    for source in og.find_sources(data_dir):
        if only is not None and os.path.basename(source.path) != only:
            continue
        for alphabet, character in og.source_index(source):
            counts[alphabet].add(character)
    return {a: len(c) for a, c in counts.items()}


def data_or_skip(path):
    if os.path.isdir(path):
        return path
    if os.environ.get("WARPGRAD_REQUIRE_DATA") == "1":
        pytest.fail(f"{path} not found (WARPGRAD_REQUIRE_DATA=1 forbids skipping).")
    pytest.skip(f"{path} not found")


def test_split_files_exist():
    assert {os.path.basename(p) for p in SPLIT_FILES} >= {"background.gin", "shared_subset.gin"}


@pytest.mark.parametrize("path", SPLIT_FILES, ids=os.path.basename)
def test_split_alphabets_are_disjoint(path):
    split = split_of(path)
    assert split["train"] and split["test"], split
    for s, names in split.items():
        assert len(set(names)) == len(names), (s, names)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(split[a]) & set(split[b]), (a, b, sorted(set(split[a]) & set(split[b])))


def test_background_split_covers_every_usable_background_alphabet():
    full = data_or_skip(os.environ.get("WARPGRAD_OMNIGLOT_FULL_DIR")
                        or os.path.join(REPO, "..", "shared", "data", "omniglot-full"))
    counts = characters_per_alphabet(full, only="images_background.zip")  # the folder now also holds evaluation
    usable = {a for a, n in counts.items() if n >= 20}
    split = split_of(os.path.join(REPO, "configs", "omniglot", "splits", "background.gin"))
    assert len(counts) == 30 and len(usable) == 26
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == usable
    assert [len(split[s]) for s in og.SPLITS] == [16, 5, 5]


def test_shared_subset_alphabets_are_meta_training_alphabets_of_the_background_split(omniglot_dir):
    """Nothing tuned on the 5-alphabet subset the tests use is a val or test alphabet of the background split."""
    subset = set(characters_per_alphabet(omniglot_dir))
    split = split_of(os.path.join(REPO, "configs", "omniglot", "splits", "background.gin"))
    assert len(subset) == 5 and subset <= set(split["train"])
    shared = split_of(os.path.join(REPO, "configs", "omniglot", "splits", "shared_subset.gin"))
    assert set(shared["train"]) | set(shared["test"]) == subset


def test_full_split_covers_the_42_usable_alphabets_of_background_and_evaluation_sets():
    full = data_or_skip(os.environ.get("WARPGRAD_OMNIGLOT_FULL_DIR")
                        or os.path.join(REPO, "..", "shared", "data", "omniglot-full"))
    usable = {a for a, n in characters_per_alphabet(full).items() if n >= 20}
    split = split_of(os.path.join(REPO, "configs", "omniglot", "splits", "full_42.gin"))
    assert len(usable) == 42
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == usable
    assert [len(split[s]) for s in og.SPLITS] == [25, 7, 10]
    background = split_of(os.path.join(REPO, "configs", "omniglot", "splits", "background.gin"))
    assert set(background["val"]) <= set(split["train"])  # the sweep budget was chosen on these


def test_a_split_naming_an_alphabet_the_data_lacks_is_one_line(omniglot_dir, omniglot_cache):
    split = split_of(os.path.join(REPO, "configs", "omniglot", "splits", "full_42.gin"))
    with pytest.raises(og.OmniglotDataError, match=r"^Alphabet 'Angelic' \(train_alphabets\) is not in "
                                                   r"the Omniglot data at [^\n]*Latin\.(\n|$)"):  # gin: own line
        og.OmniglotTasks(omniglot_dir, cache_dir=omniglot_cache, **{f"{s}_alphabets": split[s] for s in og.SPLITS})
