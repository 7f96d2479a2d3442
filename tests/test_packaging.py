"""What an install of warpgrad-tf holds (setup.py): the library and the namespaced ``warpgrad_tf_apps``, no generic
top-level ``trainers`` / ``export`` / ``benchmarks``; compatible ranges in ``install_requires``, the exact versions
in ``requirements-lock.txt``; and the console commands run a trainer away from the checkout."""

import ast
import configparser
import json
import os
import runpy
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = runpy.run_path(os.path.join(REPO, "setup.py"), run_name="setup_inspected")  # no setup() call
SOURCES = ("setup.py", "pyproject.toml", "README.md", "warpgrad_tf", "trainers", "export", "studies", "configs",
           "benchmarks")


def _lock():
    pins = {}
    with open(os.path.join(REPO, "requirements-lock.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                (spec,) = req.specifier
                assert spec.operator == "==", f"requirements-lock.txt: {line!r} is not an exact pin"
                pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_install_requires_declares_ranges_that_the_lock_file_satisfies():
    pins = _lock()
    for line in SETUP["CORE"] + SETUP["RL"] + SETUP["TEST"] + SETUP["DOCS"]:
        req = Requirement(line)
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{line!r} pins an exact version"
        assert any(s.operator in (">=", "~=") for s in req.specifier), f"{line!r} has no lower bound"
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is required but not pinned in requirements-lock.txt"
        assert req.specifier.contains(pins[name]), f"lock pin {req.name}=={pins[name]} is outside {line!r}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the checkout (the build writes build/ and *.egg-info beside the sources),
    offline: with the environment's own setuptools and wheel."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in the environment")
    pytest.importorskip("wheel", reason="building the wheel offline needs wheel in the environment")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dist), str(src)], check=True, capture_output=True, timeout=300)
    (path,) = [dist / f for f in os.listdir(dist) if f.endswith(".whl")]
    return path


def _console_scripts(names):
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    return entry_points


def test_the_wheel_installs_only_the_library_and_the_namespaced_apps(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        assert top == {"warpgrad_tf", "warpgrad_tf_apps"}
        apps = {n.split("/")[1] for n in names if n.startswith("warpgrad_tf_apps/")}
        assert apps == {"trainers", "export", "studies", "configs"}  # benchmarks/ is a checkout tool
        for name in ("trainers", "export", "studies"):  # every module of the folder, under its namespaced name
            assert {f for f in os.listdir(os.path.join(REPO, name)) if f.endswith(".py")} == {
                n.rsplit("/", 1)[1] for n in names if n.startswith(f"warpgrad_tf_apps/{name}/")}
        for dirpath, _, files in os.walk(os.path.join(REPO, "configs")):  # every gin file, as data
            for f in files:
                if f.endswith(".gin"):
                    rel = os.path.relpath(os.path.join(dirpath, f), REPO).replace(os.sep, "/")
                    assert f"warpgrad_tf_apps/{rel}" in names, rel
        assert "warpgrad_tf/layers/film_warp.py" in names and "warpgrad_tf/continual_objective.py" in names
        parser = configparser.ConfigParser()
        parser.read_string(z.read(_console_scripts(names)).decode())
        scripts = dict(parser["console_scripts"])
        assert set(scripts) == {s.split("=")[0].strip() for s in SETUP["CONSOLE_SCRIPTS"]}
        for command, target in scripts.items():  # each command names a module of the wheel that defines main
            module, attr = target.split(":")
            tree = ast.parse(z.read(module.replace(".", "/") + ".py"))
            defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                        if isinstance(t, ast.Name)}
            assert attr in defined, f"{command}: {module} defines no {attr}"


def test_apps_import_their_siblings_relatively():
    """The installed name is warpgrad_tf_apps.<folder>: an absolute ``from trainers ...`` would break it."""
    for folder in ("trainers", "export", "studies"):
        for f in os.listdir(os.path.join(REPO, folder)):
            if f.endswith(".py"):
                tree = ast.parse(open(os.path.join(REPO, folder, f)).read())
                for node in ast.walk(tree):
                    roots = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                    bad = [r for r in roots if r.split(".")[0] in ("trainers", "export", "benchmarks")]
                    assert not bad, f"{folder}/{f}:{node.lineno} imports {bad} absolutely"


@pytest.mark.slow
def test_an_installed_command_trains_away_from_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    assert not {"trainers", "export", "benchmarks"} & set(os.listdir(target))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "WARPGRAD_VERBOSE")}
    env.update(PYTHONPATH=str(target), TF_USE_LEGACY_KERAS="1")
    root = tmp_path / "run"
    result = subprocess.run([str(target / "bin" / "warpgrad-train-sine"), f"--root_dir={root}",
                             "--gin_param=train_eval.methods=['sgd']", "--gin_param=train_eval.eval_tasks=3"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.load(open(root / "results.json"))["methods"]["sgd"]["final_mse"] > 0
    assert "SGD (fixed init, no warp)" in result.stdout
    assert result.stderr.strip() == "", result.stderr  # no TensorFlow start-up lines, no absl INFO lines
    estimate = subprocess.run([str(target / "bin" / "warpgrad-study"), "estimate", "ablation", "--set=rows=leap",
                               "--set=seeds=0"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert estimate.returncode == 0, estimate.stderr  # the study's gin files are found in the installed package
    assert "CPU-hours for study 'ablation' (1 of 1 runs left)" in estimate.stdout
    usage = subprocess.run([str(target / "bin" / "warpgrad-export"), "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and "--root_dir" in usage.stdout
