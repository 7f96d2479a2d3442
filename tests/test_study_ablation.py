"""The ``ablation`` study (Table 3, App. F, studies/omniglot.py): every row end to end at a tiny budget, and its
pieces.

The end-to-end run trains every row of ``configs/omniglot/ablation/`` on the shared 5-alphabet subset (split
``configs/omniglot/splits/shared_subset.gin``: 4 meta-training alphabets, Balinese held out) in this process
(``--in_process``), one seed, with a one-block, 2-filter learner, one meta-step of one task and one inner step, and
one evaluation step: enough to run each row's algorithm, objective, warp variant and learned α once, not to
compare them.
"""

import json

import pytest

from studies import cli
from studies import omniglot as ablation
from studies.study import APPS

TINY = ["train_eval.meta_steps=1", "train_eval.inner_steps=1", "train_eval.meta_batch_size=1",
        "train_eval.task_batch_size=4", "train_eval.eval_steps=1", "train_eval.val_steps=1",
        "omniglot_convnet.filters=2", "omniglot_convnet.num_blocks=1"]


@pytest.fixture
def cache(omniglot_cache):
    return omniglot_cache  # the session's one decoded cache (conftest)


def test_every_row_runs_end_to_end_with_its_own_configuration(tmp_path, omniglot_dir, cache, monkeypatch, capsys):
    monkeypatch.setenv("WARPGRAD_TFDS_DIR", cache)
    out = tmp_path / "table3"
    assert cli.main(["run", "ablation", f"--root={out}", f"--data_dir={omniglot_dir}", "--in_process", "--docs=none",
                     "--set=seeds=3", f"--set=rows={','.join(ablation.ABLATION_ROWS)}",
                     "--set=split=configs/omniglot/splits/shared_subset.gin", "--set=gin_files=",
                     f"--set=bindings={TINY!r}"]) == 0
    saved = json.loads((out / "ablation.json").read_text())
    assert list(saved["table"]) == list(ablation.ABLATION_ROWS)  # every row of Table 3, Leap first, paper's order
    runs = {row: json.loads((out / row / "seed3" / "results.json").read_text()) for row in ablation.ABLATION_ROWS}
    records = {r["name"]: r for r in saved["runs"]}
    for row, cells in saved["table"].items():
        assert records[f"{row}/seed3"]["config"]["gin_files"][0] == f"configs/omniglot/ablation/{row}.gin"
        assert saved["paper"][row][0] == ablation.ABLATION_ROWS[row][1]
        acc = cells[""]["accuracy"]
        assert acc["n"] == 1 and acc["stderr"] == 0.0 and 0.0 <= acc["mean"] <= 100.0
        r = runs[row]  # the same alphabets and seed for every row
        assert (r["alphabets"]["test"], r["seed"], r["meta_steps"]) == (["Balinese"], 3, 1)
        assert r["preset"] == f"ablation/{row}"
    # each row's gin file reached the trainer: method, algorithm, objective, warp variant, learned α
    got = {row: (r["method"], r["algorithm"], r["objective"], r["warp"]) for row, r in runs.items()}
    assert got["leap"] == ("leap", "online", None, None)
    assert got["conv3x3"] == ("warp_leap", "offline", "exact", "conv3x3")
    assert got["approx"] == ("warp_leap", "offline", "approx", "conv3x3")
    assert got["online"] == ("warp_leap", "online", "exact", "conv3x3")
    for row in ("scale", "conv1x1", "relu", "bn", "bn_relu", "bn_res_relu", "2layer_bn_res", "film"):
        assert got[row] == ("warp_leap", "offline", "exact", row)
    operative = (out / "online" / "seed3" / "operative_config.gin").read_text()
    assert "train_eval.warp_lr = 0.001\n" in operative
    alpha = runs["learned_alpha"]["learned_rate"]
    assert alpha["granularity"] == "scalar" and alpha["values"]["*"] != runs["learned_alpha"]["inner_lr"]  # α moved
    assert all(runs[row]["learned_rate"] is None for row in ablation.ABLATION_ROWS if row != "learned_alpha")
    sizes = {row: runs[row]["warp_parameters"] for row in ("film", "2layer_bn_res", "conv3x3", "conv1x1", "scale")}
    assert sizes["film"] > sizes["2layer_bn_res"] > sizes["conv3x3"] > sizes["conv1x1"] > sizes["scale"]

    printed = capsys.readouterr().out
    table = printed[printed.index("Table 3 (App. F)"):].splitlines()
    assert table[2].startswith("None (Leap)") and len([ln for ln in table if "(n=1)" in ln]) == 13
    assert "row pairs ordered against the paper" in printed


def test_every_row_has_a_gin_file_and_a_trainer_preset():
    import glob
    import os

    from trainers import omniglot as trainer

    folder = os.path.join(APPS, "configs", "omniglot", "ablation")
    files = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(folder, "*.gin"))}
    assert files == set(ablation.ABLATION_ROWS)
    assert set(trainer.ABLATION_PRESETS) == {f"ablation/{row}" for row in ablation.ABLATION_ROWS}


def test_ranks_and_discordant_pairs():
    ours, paper = {"a": 50.0, "b": 60.0, "c": 60.0}, {"a": 80.0, "b": 70.0, "c": 90.0}
    assert ablation.ranks(ours) == {"a": 3, "b": 1, "c": 1}
    assert ablation.discordant_pairs(ours, paper) == [("a", "b")]  # a < c agrees; b = c, a tie, is not counted


@pytest.mark.parametrize("flags, message", [
    (["--set=rows=leap,conv5x5"], "ablation: unknown row 'conv5x5'"),
    (["--set=seeds=0,x"], "--set seeds: '0,x' is not a list of int"),
    (["--set=split=configs/omniglot/splits/nowhere.gin"],
     "gin file 'configs/omniglot/splits/nowhere.gin' does not exist"),
])
def test_bad_input_is_one_line_naming_the_value(flags, message, tmp_path, capsys):
    assert cli.main(["run", "ablation", f"--root={tmp_path / 'bad'}"] + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "bad").exists()  # nothing ran
