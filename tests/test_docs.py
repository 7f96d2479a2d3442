"""The code blocks of README.md and docs/ marked ``<!-- runnable -->`` run as written, each in a fresh process.

A block claims to run by the marker on the line before its fence; blocks without it are fragments (shell
commands, signatures with placeholders) and are not run. The trainer skeleton of docs/your-own-model.md has its
own test (tests/test_trainer_skeleton.py), which also checks that it resumes.
"""

import glob
import json
import os
import re
import subprocess
import sys

from tests.conftest import REPO

MARKER = "<!-- runnable -->"
_BLOCK = re.compile(re.escape(MARKER) + r"\n```python\n(.*?)```", re.S)


def _pages():
    return [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"),
                                                                recursive=True))


def _blocks():
    found = []
    for page in _pages():
        text = open(page).read()
        for match in _BLOCK.finditer(text):
            line = text[:match.start()].count("\n") + 1
            found.append((f"{os.path.relpath(page, REPO)}:{line}", match.group(1)))
    return found


def test_every_marker_starts_a_python_block():
    for page in _pages():
        text = open(page).read()
        assert text.count(MARKER) == len(_BLOCK.findall(text)), f"{page}: a {MARKER} not followed by ```python"


def test_the_readme_has_runnable_blocks():
    assert len(_BLOCK.findall(open(os.path.join(REPO, "README.md")).read())) >= 2


def test_every_test_the_docs_cite_exists():
    """``tests/test_x.py::test_name`` and ``test_x.py::test_name`` in the docs (as in docs/concepts.md) name real
    tests, and every ``tests/…py`` or ``test_….py`` file they name exists."""
    cited = set()
    for page in _pages():
        text = open(page).read()
        for path, names in re.findall(r"(?:tests/)?(test_\w+\.py)((?:::\w+)?)", text):
            cited.add((path, names.lstrip(":")))
        for path, _first, rest in re.findall(r"(test_\w+\.py)::(\w+)((?:`?, `?::\w+)*)", text):
            cited.update((path, name) for name in re.findall(r"::(\w+)", rest))
    assert cited
    for path, name in sorted(cited):
        full = os.path.join(REPO, "tests", path)
        assert os.path.isfile(full), f"the docs cite {path}, which does not exist"
        if name:
            assert re.search(rf"^def {name}\(", open(full).read(), re.M), f"the docs cite {path}::{name}, not there"


DRIVER = r"""
import json, sys, traceback
for name, code in json.loads(sys.stdin.read()):
    try:
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
    except BaseException:
        sys.stderr.write(f"{name} failed:\n{traceback.format_exc()}")
        sys.exit(1)
"""


def test_every_runnable_block_runs(tmp_path):
    """One fresh process runs every block, each in its own namespace (one TensorFlow start for all of them)."""
    blocks = _blocks()
    assert len(blocks) >= 3
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(blocks), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
