"""The ``sweep`` study (Table 2 / Fig. 4 left, studies/omniglot.py): end to end at a tiny budget, and its bad input.

The end-to-end run sweeps 1 and 2 meta-training alphabets of the 5-alphabet shared subset (split
``shared_subset.gin``: test alphabet Balinese) for Warp-Leap and SGD (4× batch, 10× lr), one seed, in this process
(``--in_process``: no TensorFlow start-up per run), with a 4-filter learner, one meta-step of one inner step and
one evaluation step: three trainer runs, as SGD runs once for every column. The bad-input checks stop before any
trainer starts.
"""

import json

import numpy as np
import pytest
from PIL import Image

from studies import cli

TINY = ["train_eval.meta_steps=1", "train_eval.inner_steps=1", "train_eval.meta_batch_size=1",
        "train_eval.task_batch_size=8", "train_eval.eval_steps=1", "train_eval.val_steps=1", "train_eval.inner_lr=0.05",
        "omniglot_convnet.filters=4"]
SUBSET = "--set=split=configs/omniglot/splits/shared_subset.gin"


@pytest.fixture
def cache(omniglot_cache):
    return omniglot_cache  # the session's one decoded cache (conftest)


def test_sweep_runs_end_to_end_and_writes_table_figure_and_page(tmp_path, omniglot_dir, cache, monkeypatch, capsys):
    monkeypatch.setenv("WARPGRAD_TFDS_DIR", cache)
    out, docs = tmp_path / "sweep", tmp_path / "docs"
    assert cli.main(["run", "sweep", f"--root={out}", f"--data_dir={omniglot_dir}", "--in_process", f"--docs={docs}",
                     "--set=counts=2,1", "--set=seeds=0", "--set=methods=warp_leap,sgd4x", SUBSET,
                     "--set=gin_files=", f"--set=bindings={TINY!r}"]) == 0
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["options"]["counts"] == [2, 1] and saved["runs_finished"] == saved["runs_total"] == 3
    table = saved["table"]
    assert list(table) == ["warp_leap", "sgd4x"]
    for row in table.values():
        assert sorted(row) == ["1", "2"]
        for cell in row.values():
            assert 0.0 <= cell["accuracy"]["mean"] <= 100.0 and cell["accuracy"]["stderr"] == 0.0
            assert cell["accuracy"]["n"] == 1  # one seed
    runs = {r["name"]: r for r in saved["runs"]}
    assert sorted(runs) == ["sgd4x/any/seed0", "warp_leap/n1/seed0", "warp_leap/n2/seed0"]
    trained = {n: json.loads((out / "warp_leap" / f"n{n}" / "seed0" / "results.json").read_text()) for n in (1, 2)}
    for n, r in trained.items():
        assert len(r["alphabets"]["train"]) == n and r["alphabets"]["test"] == ["Balinese"]
    assert set(trained[1]["alphabets"]["train"]) < set(trained[2]["alphabets"]["train"])  # nested sets per seed
    # SGD (4x batch, 10x lr): the paper's baseline relative to the loaded budget (batch 8, lr 0.05), one run for
    # every column
    sgd_results = json.loads((out / "sgd4x" / "any" / "seed0" / "results.json").read_text())
    assert (sgd_results["task_batch_size"], sgd_results["inner_lr"], sgd_results["meta_steps"]) == (32, 0.5, 0)
    assert table["sgd4x"]["1"] == table["sgd4x"]["2"] and runs["sgd4x/any/seed0"]["cols"] == ["1", "2"]
    assert not (out / "sgd4x" / "n1").exists()

    image = np.asarray(Image.open(out / "sweep.png"))
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert image.std() > 5  # not a blank canvas
    printed = capsys.readouterr().out
    lines = printed[printed.index("against the number of meta-training alphabets"):].splitlines()
    assert lines[1].split() == ["method", "n=1", "n=2"]
    assert lines[2].startswith("Warp-Leap") and lines[2].count("±") == 2
    assert any(line.startswith("SGD (4x batch, 10x lr)") for line in lines)
    page = (docs / "experiments" / "omniglot-multishot.md").read_text()
    assert "<!-- results:begin sweep -->" in page and "| SGD (4x batch, 10x lr) |" in page


@pytest.mark.parametrize("flags, message", [
    (["--set=counts=1,5"], "sweep: count 5 is larger than the 4 meta-training alphabets"),
    (["--set=methods=warp_leap,warp_reptile", "--set=counts=1,2"], "sweep: unknown method 'warp_reptile'"),
    (["--set=counts=1,x"], "--set counts: '1,x' is not a list of int"),
    (["--set=split=configs/omniglot/splits/nowhere.gin"],
     "gin file 'configs/omniglot/splits/nowhere.gin' does not exist"),
])
def test_bad_input_is_one_line_naming_the_value(flags, message, tmp_path, capsys):
    assert cli.main(["run", "sweep", f"--root={tmp_path / 'bad'}", SUBSET, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "bad").exists()  # nothing ran
