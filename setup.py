"""keras-roadmap: the ROADMAP loss (Ramzi et al., NeurIPS 2021) for Keras 3 / TensorFlow."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
# The version is written once, in keras_roadmap/_version.py (read, not imported: importing the
# package at build time would need its dependencies).
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "keras_roadmap" / "_version.py").read_text()).group(1)

# Each range runs from the lowest version tested (constraints/lowest.txt, `make test-lowest`) to
# below the next major release, or below the next minor for 0.x libraries, whose minors break;
# the highest end is what `make test` installs. docs/tested-versions.md has both ends.
# TensorFlow is an extra: the backend is the user's choice (KERAS_BACKEND=jax or torch works
# without it); tf.data pipelines, export and tf.distribute need `[tensorflow]`.
CORE = [
    "keras>=3.8,<4",
    "numpy>=1.26.4,<3",
    "faiss-cpu>=1.8,<2",
]
EXTRAS = {
    "tensorflow": ["tensorflow>=2.18,<3"],
    # Only 0.10.x tested (the JAX backend venv of `make test`).
    "jax": ["jax[cpu]>=0.10,<0.11"],
    # 0.17.1 is tensorflow-similarity's last release; keras_roadmap.tfsim works around its bugs.
    "tfsim": ["tensorflow-similarity==0.17.1"],
    # keras-hub 0.22 brought DeiTBackbone (deit_* embedders, variant="keras_hub").
    "hub": ["keras-hub>=0.22,<0.33"],
    "export": [
        "onnx>=1.16.2,<2",
        "tf2onnx>=1.16.1,<2",
        "onnxruntime>=1.18,<2",
        "pillow>=10.4,<14",
    ],  # pillow: serving decodes images
    "viz": ["matplotlib>=3.9,<4", "pillow>=10.4,<14"],
    "examples": ["tensorflow>=2.18,<3", "scikit-learn>=1.5,<2", "pyyaml>=6.0.1,<7"],
    # keras-roadmap serve: FastAPI needs python-multipart for uploads; serving decodes with Pillow.
    "serve": [
        "fastapi>=0.165,<0.166",
        "uvicorn>=0.55,<0.56",
        "python-multipart>=0.0.34,<0.1",
        "onnxruntime>=1.18,<2",
        "pillow>=10.4,<14",
    ],
    # Reading torchvision / timm checkpoints (build_embedder(weights=PATH.pth), convert-weights)
    # and the parity tests against torchvision / timm models. Only the highest end is tested:
    # each torchvision release is built for one torch minor (0.29 for 2.14), and the CPU torch
    # 2.13 this project's machines carry has no matching torchvision on PyPI.
    "torch": ["torch>=2.14.1,<2.15", "torchvision>=0.29.1,<0.30", "timm>=1.0.31,<2", "safetensors>=0.8,<0.9"],
    "recipes": [
        "tensorflow>=2.18,<3",
        "pyyaml>=6.0.1,<7",
        "tensorboard>=2.18,<3",
        "keras-hub>=0.22,<0.33",
        "onnx>=1.16.2,<2",
        "tf2onnx>=1.16.1,<2",
        "onnxruntime>=1.18,<2",
        "matplotlib>=3.9,<4",
        "pillow>=10.4,<14",
    ],
    # The documentation site (mkdocs build --strict, a step of `make test`); tested with mkdocs
    # 1.6.1, mkdocs-material 9.8.2, mkdocstrings 1.0.8, mkdocstrings-python 2.0.11.
    "docs": [
        "mkdocs>=1.6,<1.7",
        "mkdocs-material>=9.8,<9.9",
        "mkdocstrings>=1.0,<1.1",
        "mkdocstrings-python>=2.0,<2.1",
    ],
    "test": [
        "pytest>=8,<10",
        # `make test` runs the suite on two workers, a test file per worker at a time (tested: 3.8.0)
        "pytest-xdist>=3.8,<4",
        "scikit-learn>=1.5,<2",
        "pillow>=10.4,<14",
        "pyyaml>=6.0.1,<7",
        "matplotlib>=3.9,<4",
        # tests/test_wheel.py: build the sdist + wheel, check them (tested: build 1.6.1, twine 7.0.0)
        "build>=1.6,<2",
        "twine>=7,<8",
        # the HTTP client of the server tests (httpx2: what fastapi.testclient needs with starlette 1.x)
        # and the browser driver of its page test (Chromium itself comes from apt, see Makefile)
        "httpx2>=2.16,<2.17",
        "playwright>=1.65,<1.66",
        # the lint + format check of `make test` (tested: 0.17.5; one minor, as a newer ruff adds
        # rules and changes its format)
        "ruff>=0.17,<0.18",
    ],
}
# [all]: everything for the TensorFlow backend (the JAX extra is left out: one backend per venv).
EXTRAS["all"] = sorted({dep for name, deps in EXTRAS.items() if name not in ("test", "jax", "docs") for dep in deps})

setup(
    name="keras-roadmap",
    version=VERSION,
    description="ROADMAP: robust and decomposable average precision for image retrieval, in Keras 3",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_roadmap", "keras_roadmap.*"]),
    # What `keras-roadmap train NAME` reads at run time, and the PEP 561 marker (typed package).
    package_data={"keras_roadmap": ["py.typed"], "keras_roadmap.recipes": ["configs/*.yaml"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["keras-roadmap=keras_roadmap.cli:main"]},
    license="MIT",
)
