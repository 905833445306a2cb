"""keras-roadmap: the ROADMAP loss (Ramzi et al., NeurIPS 2021) for Keras 3 / TensorFlow."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

# Ranges are the versions this package was tested with (see README, "Tested versions").
# TensorFlow is an extra: the backend is the user's choice (KERAS_BACKEND=jax or torch works
# without it); tf.data pipelines, export and tf.distribute need `[tensorflow]`.
CORE = [
    "keras>=3.15,<3.16",
    "numpy>=2.0,<2.5",
    "faiss-cpu>=1.15,<1.16",
]
EXTRAS = {
    "tensorflow": ["tensorflow>=2.21,<2.22"],
    "jax": ["jax[cpu]>=0.10,<0.11"],
    "tfsim": ["tensorflow-similarity==0.17.1"],
    "cv": ["keras-cv==0.9.0"],
    "hub": ["keras-hub==0.32.0"],
    "export": ["onnx>=1.23,<1.24", "tf2onnx==1.17.0", "onnxruntime>=1.32,<1.33", "pillow>=11,<14"],  # pillow: serving decodes images
    # keras-roadmap serve: FastAPI needs python-multipart for uploads; serving decodes with Pillow.
    "serve": ["fastapi>=0.165,<0.166", "uvicorn>=0.55,<0.56", "python-multipart>=0.0.34,<0.1",
              "onnxruntime>=1.32,<1.33", "pillow>=11,<14"],
    "viz": ["matplotlib>=3.10,<3.12", "pillow>=11,<14"],
    "examples": ["tensorflow>=2.21,<2.22", "scikit-learn>=1.6,<1.10", "pyyaml>=6,<7"],
    # Reading torchvision / timm checkpoints (build_embedder(weights=PATH.pth), convert-weights)
    # and the parity tests against torchvision / timm models. torch and torchvision go together
    # (torchvision 0.29 is built for torch 2.14).
    "torch": ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "safetensors>=0.8,<0.9"],
    "recipes": [
        "tensorflow>=2.21,<2.22",
        "pyyaml>=6,<7",
        "tensorboard>=2.21,<2.22",
        "keras-hub==0.32.0",
        "onnx>=1.23,<1.24",
        "tf2onnx==1.17.0",
        "onnxruntime>=1.32,<1.33",
        "matplotlib>=3.10,<3.12",
        "pillow>=11,<14",
    ],
    "test": ["pytest>=8,<10", "scikit-learn>=1.6,<1.10", "pillow>=11,<14", "pyyaml>=6,<7", "matplotlib>=3.10,<3.12",
             # the HTTP client of the server tests (httpx2: what fastapi.testclient needs with starlette 1.x)
             # and the browser driver of its page test (Chromium itself comes from apt, see Makefile)
             "httpx2>=2.16,<2.17", "playwright>=1.65,<1.66"],
}
# [all]: everything for the TensorFlow backend (the JAX extra is left out: one backend per venv).
EXTRAS["all"] = sorted({dep for name, deps in EXTRAS.items() if name not in ("test", "jax") for dep in deps})

setup(
    name="keras-roadmap",
    version="0.1.0",
    description="ROADMAP: robust and decomposable average precision for image retrieval, in Keras 3",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_roadmap", "keras_roadmap.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["keras-roadmap=keras_roadmap.cli:main"]},
    license="MIT",
)
