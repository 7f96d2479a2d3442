"""Packaging for warpgrad-tf: meta-learned warped gradient descent for TensorFlow 2 / Keras 3.

What an install puts into site-packages:

* ``warpgrad_tf`` — the library;
* ``warpgrad_tf_apps.trainers``, ``warpgrad_tf_apps.export`` and ``warpgrad_tf_apps.studies`` — the repository's
  ``trainers/``, ``export/`` and ``studies/`` folders under one namespaced name, so no generic top-level
  ``trainers`` or ``export`` package can collide with another project's; they run as the console commands of
  ``CONSOLE_SCRIPTS``. From a checkout they stay ``python -m trainers.<name>`` / ``python -m export.<name>`` /
  ``python -m studies`` (the folders import their siblings relatively).
* ``warpgrad_tf_apps/configs/`` — the repository's gin files (``configs/``, data only), so a study or a trainer
  finds ``configs/omniglot/sgd.gin`` the same way installed as in a checkout.
* ``benchmarks/`` is not installed: it measures this repository against the authors' release, from a checkout.

``install_requires`` declares compatible ranges (the versions tested, up to the next breaking release);
``requirements-lock.txt`` holds the exact versions ``make`` and CI install (``pip install -c
requirements-lock.txt``), and ``tests/test_packaging.py`` checks that every lock pin lies in its range.
"""

import os

from setuptools import setup

_HERE = os.path.dirname(os.path.abspath(__file__))

#: Installed name of each repository folder that is not the library.
APPS = {"warpgrad_tf_apps.trainers": "trainers", "warpgrad_tf_apps.export": "export",
        "warpgrad_tf_apps.studies": "studies"}
#: the gin files, installed as data beside the apps (no ``__init__``: not importable, only read).
CONFIGS = {"warpgrad_tf_apps.configs": "configs"}

#: ``command = module:function``; every trainer's ``main`` is ``common.entry_point(train_eval)``.
CONSOLE_SCRIPTS = [
    "warpgrad-train-sine = warpgrad_tf_apps.trainers.sine_demo:main",
    "warpgrad-train-omniglot = warpgrad_tf_apps.trainers.omniglot:main",
    "warpgrad-train-fewshot = warpgrad_tf_apps.trainers.fewshot:main",
    "warpgrad-train-synthetic2d = warpgrad_tf_apps.trainers.synthetic2d:main",
    "warpgrad-train-continual-sine = warpgrad_tf_apps.trainers.continual_sine:main",
    "warpgrad-train-maze = warpgrad_tf_apps.trainers.maze:main",
    "warpgrad-export = warpgrad_tf_apps.export.saved_model:main",
    "warpgrad-try-sine = warpgrad_tf_apps.export.try_sine:main",
    "warpgrad-export-litert = warpgrad_tf_apps.export.litert:main",
    "warpgrad-study = warpgrad_tf_apps.studies.cli:main",
]

# TensorFlow, TensorBoard and tf_keras move together by minor release (tf_keras 2.x requires TensorFlow 2.x);
# pre-1.0 packages are held to their tested minor release.
CORE = [
    "tensorflow>=2.21,<3",
    "keras>=3.15,<4",
    "numpy>=2.0,<3",
    "tensorflow-datasets>=4.9,<5",
    "tensorboard>=2.21,<3",
    "gin-config>=0.5,<0.6",
    "absl-py>=2.1,<3",
    "tqdm>=4.60,<5",
    "pillow>=10",
    "matplotlib>=3.8,<4",
]
RL = ["tf-agents>=0.19,<0.20", "tf_keras>=2.21,<2.22", "tensorflow-probability>=0.23,<0.24"]
TEST = ["pytest>=8,<10", "ruff>=0.17,<0.18"]
LITERT = ["ai-edge-litert>=2.3,<3"]  # export.litert / export.load_litert: on-device adaptation
# make docs: MkDocs with the Material theme; mkdocstrings renders the API reference from the docstrings.
DOCS = ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings>=1.0,<2", "mkdocstrings-python>=2.0,<3"]
# benchmarks.torch_reference / benchmarks.reference_ratio: the same-work PyTorch reference. Not in ``all``: install
# the CPU build by its exact version (``pip install torch==2.13.0+cpu``; plain ``torch`` pulls GPU libraries).
BENCH = ["torch>=2.13,<2.15"]


def _version():
    with open(os.path.join(_HERE, "warpgrad_tf", "version.py")) as f:
        scope = {}
        exec(f.read(), scope)
        return scope["__version__"]


def _packages():
    """``warpgrad_tf`` and its subpackages, and :data:`APPS` (no ``__init__`` for the namespace itself)."""
    found = []
    for name, folder in {"warpgrad_tf": "warpgrad_tf", **APPS}.items():
        for dirpath, _, files in os.walk(os.path.join(_HERE, folder)):
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, os.path.join(_HERE, folder))
                found.append(name if rel == "." else ".".join([name, *rel.split(os.sep)]))
    return sorted(found)


if __name__ == "__main__":
    setup(
        name="warpgrad-tf",
        version=_version(),
        description="Warped gradient descent (WarpGrad, Flennerhag et al., ICLR 2020) for TensorFlow 2 / Keras 3.",
        long_description=open(os.path.join(_HERE, "README.md")).read(),
        long_description_content_type="text/markdown",
        python_requires=">=3.10",
        packages=_packages() + list(CONFIGS),
        package_dir={**APPS, **CONFIGS},
        package_data={name: ["*.gin", "*/*.gin", "*/*/*.gin", "*/*/*/*.gin"] for name in CONFIGS},
        install_requires=CORE,
        extras_require={"rl": RL, "test": TEST, "litert": LITERT, "docs": DOCS, "all": RL + TEST + LITERT + DOCS,
                        "bench": BENCH},
        entry_points={"console_scripts": CONSOLE_SCRIPTS},
        license="Apache-2.0",
    )
