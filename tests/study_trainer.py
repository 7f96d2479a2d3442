"""A stand-in trainer for tests/test_studies.py: the CLI of ``trainers/`` (``--root_dir``, ``--gin_file``,
``--gin_param``), a checkpoint after every step, resume from it, ``results.json`` last — without TensorFlow.

Its score after ``steps`` steps is a deterministic function of ``seed`` and ``value``, whether or not the run was
interrupted and resumed, so a study killed mid-way must end with the same table as an uninterrupted one.
"""

import argparse
import json
import os
import sys
import time

import gin

__all__ = ["TINY", "main", "train_eval"]


def train_eval(root_dir, steps=4, value=1.0, seed=0, pause=0.0, fail=False):
    if fail:
        raise ValueError("train_eval.fail is set.")
    ckpt = os.path.join(root_dir, "checkpoints", "state.json")
    state = {"step": 0, "score": 100.0 * seed}
    if os.path.exists(ckpt):
        with open(ckpt) as f:
            state = json.load(f)
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    while state["step"] < steps:
        state = {"step": state["step"] + 1, "score": 0.5 * state["score"] + value * (state["step"] + 1)}
        with open(ckpt + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(ckpt + ".tmp", ckpt)
        time.sleep(pause)
    with open(os.path.join(root_dir, "results.json"), "w") as f:
        json.dump({"score": state["score"], "steps": steps}, f)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--root_dir", required=True)
    p.add_argument("--gin_file", action="append", default=[])
    p.add_argument("--gin_param", action="append", default=[])
    args = p.parse_args(argv)
    # registered by the program only: a study importing TINY must not add a second gin ``train_eval`` beside
    # trainers.common's (the short selector would become ambiguous in that process)
    configured = gin.external_configurable(train_eval, "train_eval", module="study_trainer")
    gin.parse_config_files_and_bindings(args.gin_file, args.gin_param)
    try:
        configured(args.root_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _runs(o):
    from studies.study import Run

    return [Run(f"{row}/seed{s}", o["trainer"], tuple(o["gin_files"]),
                (f"train_eval.seed={s}", f"train_eval.steps={o['steps']}", f"train_eval.pause={o['pause']!r}",
                 *o["bindings"]), s, row, data=False)
            for row in o["rows"] for s in o["seeds"]]


def _metrics(results, run_dir, settings):
    return {"score": results["score"]}


def _study():
    from studies.study import Study

    return Study(name="tiny", page="tiny", runs=_runs, metrics=_metrics, metric="score",
                 title="A tiny study of the stand-in trainer",
                 options={"rows": ["a"], "seeds": [0, 1], "steps": 4, "pause": 0.0, "trainer": "tests.study_trainer",
                          "gin_files": [], "bindings": []})


TINY = _study()
