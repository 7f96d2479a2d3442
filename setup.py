"""Packaging for warpgrad-tf: meta-learned warped gradient descent for TensorFlow 2 / Keras 3."""

import os

from setuptools import find_packages, setup

_HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(_HERE, "warpgrad_tf", "version.py")) as f:
        scope = {}
        exec(f.read(), scope)
        return scope["__version__"]


CORE = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "numpy==2.3.5",
    "tensorflow-datasets==4.9.10",
    "tensorboard==2.21.0",
    "gin-config==0.5.0",
    "absl-py==2.5.1",
    "tqdm==4.70.1",
    "pillow==13.0.0",
    "matplotlib==3.11.2",
]
RL = ["tf-agents==0.19.0", "tf_keras==2.21.0", "tensorflow-probability==0.23.0"]
TEST = ["pytest==9.2.0", "ruff==0.17.6"]
LITERT = ["ai-edge-litert>=2.3,<3"]  # export.litert / export.load_litert: on-device adaptation

setup(
    name="warpgrad-tf",
    version=_version(),
    description="Warped gradient descent (WarpGrad, Flennerhag et al., ICLR 2020) for TensorFlow 2 / Keras 3.",
    long_description=open(os.path.join(_HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["warpgrad_tf", "warpgrad_tf.*", "trainers", "trainers.*",
                                    "export", "export.*", "benchmarks", "benchmarks.*"]),
    install_requires=CORE,
    extras_require={"rl": RL, "test": TEST, "litert": LITERT, "all": RL + TEST + LITERT},
    license="Apache-2.0",
)
