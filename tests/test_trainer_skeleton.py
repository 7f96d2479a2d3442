"""docs/your-own-model.md's "a new trainer is this skeleton" runs as written: it trains, writes the exportable model and
resumes from its checkpoint."""

import json
import os
import re
import shutil
import subprocess
import sys

from tests.conftest import REPO


def _skeleton():
    text = open(os.path.join(REPO, "docs", "your-own-model.md")).read()
    section = text[text.index("## A new trainer is this skeleton"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_trainer_skeleton_trains_and_resumes(tmp_path):
    package = tmp_path / "trainers"  # a copy of trainers/ with the skeleton beside common.py and loop.py
    shutil.copytree(os.path.join(REPO, "trainers"), package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "skeleton.py").write_text(_skeleton())
    env = dict(os.environ, PYTHONPATH=REPO, TF_USE_LEGACY_KERAS="1")
    root = tmp_path / "run"
    for steps in (2, 3):
        proc = subprocess.run([sys.executable, "-m", "trainers.skeleton", f"--root_dir={root}",
                               f"--gin_param=train_eval.meta_steps={steps}", "--gin_param=train_eval.inner_steps=3"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.load(open(root / "model" / "warpgrad.json"))["training_step"] == steps
    assert sorted(int(f.split("-")[1].split(".")[0]) for f in os.listdir(root / "checkpoints")
                  if f.startswith("ckpt-") and f.endswith(".index")) == [2, 3]
