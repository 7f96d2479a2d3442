"""benchmarks/omniglot_sweep.py (Table 2 / Fig. 4 left): end to end at a tiny budget, and its bad input.

The end-to-end run sweeps 1 and 2 meta-training alphabets of the 5-alphabet shared subset (test alphabet
Balinese) for Warp-Leap and SGD (4×), one seed, in this process (``--in_process``: no TensorFlow start-up per
run), with a 4-filter learner, one meta-step of one inner step and one evaluation step: three trainer runs, as
SGD runs once for every column. The bad-input checks stop before any trainer starts.
"""

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import omniglot_sweep as sweep

TINY = ["train_eval.meta_steps=1", "train_eval.inner_steps=1", "train_eval.meta_batch_size=1",
        "train_eval.task_batch_size=8", "train_eval.eval_steps=1", "train_eval.val_steps=1", "train_eval.inner_lr=0.05",
        "omniglot_convnet.filters=4"]


@pytest.fixture
def cache(omniglot_cache):
    return omniglot_cache  # the session's one decoded cache (conftest)


def test_sweep_runs_end_to_end_and_writes_table_and_figure(tmp_path, omniglot_dir, cache, monkeypatch, capsys):
    monkeypatch.setenv("WARPGRAD_TFDS_DIR", cache)
    out = tmp_path / "sweep"
    payload = sweep.main([f"--data_dir={omniglot_dir}", f"--out={out}", "--counts=2,1", "--seeds=0",
                          "--methods=warp_leap,sgd4x", "--test_alphabets=Balinese", "--in_process"]
                         + [f"--gin_param={p}" for p in TINY])
    saved = json.loads((out / "sweep.json").read_text())
    assert saved == json.loads(json.dumps(payload))
    assert saved["counts"] == [1, 2] and saved["test_alphabets"] == ["Balinese"]
    assert saved["batch_norm_eval"] == "running"
    assert list(saved["methods"]) == ["warp_leap", "sgd4x"]
    for m, row in saved["methods"].items():
        assert sorted(row["accuracy"]) == ["1", "2"]
        for cell in row["accuracy"].values():
            assert 0.0 <= cell["mean"] <= 100.0 and cell["stderr"] == 0.0  # one seed
        assert [r["count"] for r in row["runs"]] == [1, 2]
        for r in row["runs"]:
            assert "Balinese" not in r["train_alphabets"]
            if m != "sgd4x":
                assert len(r["train_alphabets"]) == r["count"]
    warp_runs = saved["methods"]["warp_leap"]["runs"]
    assert set(warp_runs[0]["train_alphabets"]) < set(warp_runs[1]["train_alphabets"])  # nested sets per seed
    # SGD (4x): 4x the task batch (8) and the inner lr (0.05) of this configuration, one run for every column
    assert saved["sgd4x_base"] == {"task_batch_size": 8, "inner_lr": 0.05}
    sgd_results = json.loads((out / "sgd4x" / "any" / "seed0" / "results.json").read_text())
    assert (sgd_results["task_batch_size"], sgd_results["inner_lr"]) == (32, 0.2)
    assert sgd_results["meta_steps"] == 0
    cells = saved["methods"]["sgd4x"]["accuracy"]
    assert cells["1"] == cells["2"]
    assert not (out / "sgd4x" / "n1").exists()

    image = np.asarray(Image.open(out / "fig4_left.png"))
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert image.std() > 5  # not a blank canvas
    printed = capsys.readouterr().out
    table = printed[printed.index("rows methods"):].splitlines()
    assert table[1].split() == ["method", "1", "2"]
    assert table[2].startswith("Warp-Leap") and table[2].count("±") == 2
    assert any(line.startswith("SGD (4x batch, 4x lr)") for line in table)


@pytest.mark.parametrize("flags, message", [
    (["--counts=1,5"], "--counts: 5 is larger than the 4 usable meta-training alphabets"),
    (["--train_alphabets=Greek,Balinese"], "--train_alphabets: 'Balinese' is a test alphabet"),
    (["--methods=warp_leap,warp_reptile"], "--methods: unknown method 'warp_reptile'"),
    (["--test_alphabets=Klingon"], "--test_alphabets: 'Klingon' is not a usable"),
    (["--counts=1,x"], "--counts: 'x' is not an integer"),
])
def test_bad_input_is_one_line_naming_the_value(flags, message, tmp_path, omniglot_dir, cache, monkeypatch):
    monkeypatch.setenv("WARPGRAD_TFDS_DIR", cache)
    argv = [f"--data_dir={omniglot_dir}", f"--out={tmp_path / 'bad'}", "--test_alphabets=Balinese"] + flags
    with pytest.raises(SystemExit) as e:
        sweep.main(argv)
    text = str(e.value)
    assert text.startswith("error: ") and "\n" not in text and message in text, text
    assert not (tmp_path / "bad").exists()  # nothing ran
