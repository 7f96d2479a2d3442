"""The study harness (studies/): a study killed mid-way and restarted ends with the same table as an
uninterrupted one; a finished run is not run again; the table's mean ± s.e. is the hand computation; a bad
definition is one line naming the trainer, gin file or binding before any run starts. The runs are the
TensorFlow-free stand-in trainer of tests/study_trainer.py (study ``tests.study_trainer:TINY``)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from studies import cli, report
from studies.study import StudyError, parse_option

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "tests.study_trainer:TINY"


def _run(root, *extra):
    return cli.main(["run", TINY, f"--root={root}", "--docs=none", "--nice=0", *extra])


def _table(root):
    with open(os.path.join(root, "tiny.json")) as f:
        payload = json.load(f)
    return payload["table"], {r["name"]: r["metrics"] for r in payload["runs"]}


def _score(seed, steps, value=1.0):  # tests/study_trainer.py's recursion, by hand
    score = 100.0 * seed
    for k in range(1, steps + 1):
        score = 0.5 * score + value * k
    return score


def test_a_study_killed_midway_and_restarted_ends_with_the_same_table(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run(whole, "--set=steps=6") == 0
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "studies", "run", TINY, f"--root={cut}", "--docs=none", "--nice=0",
                             "--set=steps=6", "--set=pause=0.3"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = cut / "a" / "seed0" / "checkpoints" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text() or "{}").get("step", 0) >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the harness and its trainer, after the first run's second checkpoint
    proc.wait()
    assert not (cut / "a" / "seed0" / "results.json").exists() and not (cut / "a" / "seed1").exists()
    assert _run(cut, "--set=steps=6") == 2  # other settings (no pause) than the killed run's: refused
    # the same command as the killed one finishes it: run a/seed0 resumes from its checkpoint
    assert cli.main(["run", TINY, f"--root={cut}", "--docs=none", "--nice=0", "--set=steps=6",
                     "--set=pause=0.3"]) == 0
    record = json.loads((cut / "a" / "seed0" / "run.json").read_text())
    assert record["status"] == "done" and [a["resumed"] for a in record["attempts"]] == [True]
    assert _table(cut) == _table(whole)


def test_a_finished_run_is_not_run_again(tmp_path, capsys):
    assert _run(tmp_path) == 0
    results = tmp_path / "a" / "seed1" / "results.json"
    stamp, record = results.stat().st_mtime_ns, (tmp_path / "a" / "seed1" / "run.json").read_text()
    capsys.readouterr()
    assert _run(tmp_path) == 0
    assert "2 runs, 2 finished, 0 to run" in capsys.readouterr().out
    assert results.stat().st_mtime_ns == stamp and (tmp_path / "a" / "seed1" / "run.json").read_text() == record


def test_each_run_records_its_cost_machine_and_commit(tmp_path):
    assert _run(tmp_path) == 0
    record = json.loads((tmp_path / "a" / "seed0" / "run.json").read_text())
    assert record["config"]["trainer"] == "tests.study_trainer" and record["config"]["seed"] == 0
    (attempt,) = record["attempts"]
    assert attempt["exit"] == 0 and attempt["cpu_s"] > 0 and attempt["wall_s"] > 0 and attempt["peak_rss_mb"] > 1
    assert set(record["machine"]) == {"cpu", "cores", "tensorflow", "host"} and record["machine"]["cores"] >= 1
    assert record["commit"]


def test_the_table_is_mean_and_standard_error_over_seeds(tmp_path, capsys):
    assert _run(tmp_path, "--set=seeds=0,1,5") == 0
    table, per_run = _table(tmp_path)
    scores = [_score(s, 4) for s in (0, 1, 5)]
    assert [per_run[f"a/seed{s}"]["score"] for s in (0, 1, 5)] == pytest.approx(scores)
    mean = sum(scores) / 3
    stderr = math.sqrt(sum((x - mean) ** 2 for x in scores) / 2) / math.sqrt(3)
    cell = table["a"][""]["score"]
    assert cell == pytest.approx({"mean": mean, "stderr": stderr, "n": 3})
    assert f"{mean:.1f} ± {stderr:.1f} (n=3)" in capsys.readouterr().out
    (tmp_path / "tiny.json").unlink()
    assert cli.main(["report", TINY, f"--root={tmp_path}", "--docs=none"]) == 0  # with the flags it ran with
    assert _table(tmp_path) == (table, per_run)
    assert cli.main(["report", TINY, f"--root={tmp_path}", "--docs=none", "--set=steps=5"]) == 2  # not as it ran
    assert "was made with other settings" in capsys.readouterr().err
    assert report.mean_stderr([4.0]) == {"mean": 4.0, "stderr": 0.0, "n": 1}


def test_report_writes_the_docs_block_hparams_and_json(tmp_path):
    docs = tmp_path / "docs"
    page = docs / "experiments" / "tiny.md"
    page.parent.mkdir(parents=True)
    page.write_text("# Tiny\n\nprose before\n\n<!-- results:begin other -->\nkept\n<!-- results:end other -->\n\n"
                    "<!-- results:begin tiny -->\nold\n<!-- results:end tiny -->\n\nprose after\n")
    assert _run(tmp_path / "root") == 0
    assert cli.main(["report", TINY, f"--root={tmp_path / 'root'}", f"--docs={docs}"]) == 0
    text = page.read_text()
    assert text.startswith("# Tiny\n\nprose before\n\n<!-- results:begin other -->\nkept\n")
    assert text.endswith("prose after\n")
    assert "<!-- results:begin tiny -->\n" in text
    assert "old" not in text and "| a | " in text and "(n=2)" in text and "CPU-hours on" in text
    events = [f for r in ("a/seed0", "a/seed1") for f in os.listdir(tmp_path / "root" / "hparams" / r)]
    assert len(events) == 2 and all(f.startswith("events.out.tfevents") for f in events)
    fresh = tmp_path / "fresh_docs"
    assert cli.main(["report", TINY, f"--root={tmp_path / 'root'}", f"--docs={fresh}"]) == 0
    assert (fresh / "experiments" / "tiny.md").read_text().startswith("# A tiny study of the stand-in trainer\n\n"
                                                                      "<!-- results:begin tiny -->\n")


@pytest.mark.parametrize("flags, message", [
    (["--set=trainer=no_such_trainer"], "run 'a/seed0': unknown trainer 'no_such_trainer'"),
    (["--gin_file=configs/omniglot/nowhere.gin"], "run 'a/seed0': gin file 'configs/omniglot/nowhere.gin' does not "
                                                  "exist"),
    (["--gin_param=train_eval.value = [1,"], "run 'a/seed0': binding 'train_eval.value = [1,' does not parse"),
    (["--set=colour=red"], "--set 'colour': not an option of this study"),
])
def test_a_bad_definition_is_one_line_naming_it_before_any_run(flags, message, tmp_path, capsys):
    assert _run(tmp_path / "bad", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "bad").exists()  # nothing ran


def test_a_failing_run_is_one_line_with_the_trainers_error(tmp_path, capsys):
    assert _run(tmp_path, "--gin_param=train_eval.fail=True") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 'a/seed0' failed (exit 2): train_eval.fail is set." in err, err


def test_options_follow_their_defaults_types():
    defaults = {"seeds": [0], "lr": 1.0, "split": "x.gin"}
    assert parse_option("seeds=0,1, 2", defaults) == ("seeds", [0, 1, 2])
    assert parse_option("lr=0.5", defaults) == ("lr", 0.5)
    assert parse_option("split=configs/a.gin", defaults) == ("split", "configs/a.gin")
    with pytest.raises(StudyError, match="not a list of int"):
        parse_option("seeds=0,x", defaults)


def test_every_study_of_the_catalogue_validates_with_its_defaults():
    for name, study in cli.STUDIES.items():
        options, runs = cli.plan(study)
        assert runs and len({r.name for r in runs}) == len(runs), name


def test_a_claim_is_shown_only_when_its_seed_paired_gap_exceeds_twice_its_standard_error():
    def rec(row, seed, acc, cols=("5",)):
        return {"row": row, "seed": seed, "cols": list(cols), "metrics": {"accuracy": acc}}

    records = [rec("warp", 0, 40.0), rec("warp", 1, 50.0), rec("warp", 2, 45.0),
               rec("sgd", 0, 30.0, ("1", "5")), rec("sgd", 1, 41.0, ("1", "5")), rec("sgd", 2, 36.0, ("1", "5")),
               rec("leap", 0, 45.0), rec("leap", 1, 40.0), rec("warp", 0, 20.0, ("1",))]
    diffs = [10.0, 9.0, 9.0]  # paired by seed: the seed's data is shared by both rows
    se = math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2 / 3)
    line, result = report.claim(records, "warp", "sgd", "5")
    assert result["n"] == 3 and math.isclose(result["mean"], 28 / 3) and math.isclose(result["stderr"], se)
    assert result["shown"] and line.endswith("— shown")
    line, result = report.claim(records, "warp", "leap", "5")  # seeds 0, 1 only: -5 and +10
    assert result["n"] == 2 and math.isclose(result["mean"], 2.5) and not result["shown"]
    assert "not shown at this budget" in line
    _, result = report.claim(records, "warp", "warp", "5", col_b="1")  # one seed: never shown
    assert result["n"] == 1 and result["mean"] == 20.0 and not result["shown"]
    assert report.claim(records, "leap", "sgd", "1")[1] is None


def test_the_table1_study_checks_warp_maml_against_each_baseline_paired_by_seed():
    from studies.other import FEWSHOT, FEWSHOT_BASELINES

    def rec(row, seed, acc):
        return {"row": row, "seed": seed, "cols": [""], "metrics": {
            "accuracy": acc, "ci95": 1.0, "episodes": 600, "meta_steps": 10, "best_val_accuracy": acc}}

    records = [rec("warp_maml", s, 80.0 + s) for s in range(3)] + [rec("maml_published", s, 70.0 + 2 * s)
                                                                     for s in range(3)]
    records += [rec("maml", 0, 79.0)]
    lines, payload = FEWSHOT.extra({"warp_maml": {}, "maml_published": {}, "maml": {}}, records, {})
    by_b = {c["b"]: c for c in payload["claims"]}
    assert set(by_b) == {"maml_published", "maml"} and set(FEWSHOT_BASELINES) >= set(by_b)
    assert by_b["maml_published"]["n"] == 3 and math.isclose(by_b["maml_published"]["mean"], 9.0)
    assert by_b["maml_published"]["shown"]  # gaps 10, 9, 8: mean 9, s.e. 0.58
    assert by_b["maml"]["n"] == 1 and not by_b["maml"]["shown"]  # one seed is never shown
    assert any(line.startswith("Warp-MAML > MAML (published") and line.endswith("— shown") for line in lines)


def _omniglot_run(name, gin_file):
    from studies.study import Run

    return Run(name, "omniglot", (gin_file, "configs/omniglot/splits/full_42.gin",
                                  "configs/omniglot/budgets/study_cpu.gin"), ("train_eval.seed=0",))


def test_a_runs_cost_weighs_its_meta_training_samples_by_method():
    from studies import estimate

    leap = estimate.work(_omniglot_run("leap", "configs/omniglot/ablation/leap.gin"))[1]
    exact = estimate.work(_omniglot_run("conv3x3", "configs/omniglot/ablation/conv3x3.gin"))[1]
    approx = estimate.work(_omniglot_run("approx", "configs/omniglot/ablation/approx.gin"))[1]
    sgd = estimate.work(_omniglot_run("sgd", "configs/omniglot/sgd.gin"))[1]
    assert leap["meta"] == 150 * 5 * 20  # study_cpu.gin: 150 meta-steps of 5 tasks x 20 steps, one Leap sample each
    assert exact["meta"] == pytest.approx(estimate.SAMPLE_COST["exact"] * leap["meta"])  # Eq. 11 replays each
    assert approx["meta"] == pytest.approx(estimate.SAMPLE_COST["approx"] * leap["meta"])
    assert exact["eval"] == leap["eval"]
    assert sgd["meta"] == 0 and 0 < sgd["eval"] < leap["eval"]  # SGD meta-trains nothing and validates once


def test_finished_runs_of_one_method_calibrate_the_estimate_of_another(tmp_path, monkeypatch):
    from studies import estimate, execute

    leap = _omniglot_run("leap/seed0", "configs/omniglot/ablation/leap.gin")
    warp = _omniglot_run("conv3x3/seed0", "configs/omniglot/ablation/conv3x3.gin")
    reference = {run.name: sum(estimate.REFERENCE["omniglot"][p] * u for p, u in estimate.work(run)[1].items())
                 for run in (leap, warp)}
    os.makedirs(tmp_path / "leap" / "seed0")
    record = {"status": "done", "machine": execute.machine(),
              "attempts": [{"cpu_s": 1.5 * reference["leap/seed0"]}]}  # this machine: 1.5x the reference
    with open(tmp_path / "leap" / "seed0" / execute.RECORD, "w") as f:
        json.dump(record, f)
    monkeypatch.setattr(estimate, "_speed", lambda: estimate.REFERENCE_GFLOPS)  # other kinds: reference speed
    total, by_kind, unknown = estimate.estimate([leap, warp], str(tmp_path))
    assert not unknown and total == pytest.approx(1.5 * reference["conv3x3/seed0"])
    assert by_kind["omniglot"][1:] == (1, "1 finished runs here")


def test_table_cells_show_the_standard_error_to_two_significant_figures():
    from studies.study import Study

    study = Study("t", "T", "", runs=None, metrics=None)
    table = {"kfac": {"": {"accuracy": report.mean_stderr([5.1, 5.4, 6.0])}},  # s.e. 0.265
             "warp": {"": {"accuracy": report.mean_stderr([33.1, 41.2, 63.4])}},  # s.e. 9.06
             "mse": {"": {"accuracy": report.mean_stderr([0.0150, 0.0160, 0.0170])}},  # s.e. 0.00058: 4 at most
             "one": {"": {"accuracy": report.mean_stderr([56.7])}}}
    text = report.format_table(study, table, markdown=True)
    for cell in ("5.50 ± 0.26 (n=3)", "45.9 ± 9.1 (n=3)", "0.0160 ± 0.0006 (n=3)", "56.7 ± 0.0 (n=1)"):
        assert cell in text, text


def test_a_study_stopped_by_sigterm_records_the_running_attempt_and_resumes_it(tmp_path):
    """SIGTERM to the harness alone: it passes the signal to its trainer, records that attempt (its CPU-seconds
    included) as interrupted, starts no other run and exits 128 + 15; the same command then finishes the study."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run(whole, "--set=steps=6") == 0
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "studies", "run", TINY, f"--root={cut}", "--docs=none", "--nice=0",
                             "--set=steps=6", "--set=pause=0.3"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = cut / "a" / "seed0" / "checkpoints" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text() or "{}").get("step", 0) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the harness only, not its process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted: stopped by signal 15; 1 running trainers stopped" in err, err
    record = json.loads((cut / "a" / "seed0" / "run.json").read_text())
    (attempt,) = record["attempts"]
    assert record["status"] == "interrupted" and attempt["exit"] != 0 and attempt["cpu_s"] > 0
    assert not (cut / "a" / "seed0" / "results.json").exists() and not (cut / "a" / "seed1").exists()
    assert cli.main(["run", TINY, f"--root={cut}", "--docs=none", "--nice=0", "--set=steps=6",
                     "--set=pause=0.3"]) == 0
    record = json.loads((cut / "a" / "seed0" / "run.json").read_text())
    assert record["status"] == "done" and [a["resumed"] for a in record["attempts"]] == [False, True]
    assert _table(cut) == _table(whole)
