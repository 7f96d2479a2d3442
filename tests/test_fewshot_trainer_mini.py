"""trainers/fewshot.py: one meta-step per miniimagenet gin file on pickle fixtures written by the tests."""

import os

import pytest

from tests.test_fewshot_trainer import check_one_meta_step, gin_files, make_data


@pytest.fixture(scope="module")
def data(tmp_path_factory, omniglot_dir):
    return make_data(tmp_path_factory, omniglot_dir)


@pytest.mark.parametrize("gin_file", gin_files("miniimagenet"), ids=lambda p: os.path.basename(p)[:-4])
def test_one_meta_step_per_gin_file(gin_file, tmp_path, data):
    check_one_meta_step(gin_file, tmp_path, data)
