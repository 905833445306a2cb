"""Builds the JAX and PyTorch test virtualenvs, WITHOUT TensorFlow: ``<repo>/.venv-jax``, ``.venv-torch``.

``python tests/backend_venvs.py jax torch`` (what ``make test`` runs before pytest); the test
fixture calls :func:`ensure` too, so ``pytest tests`` alone builds them once (pip, from PyPI; on
this machine ``torch==2.13.0`` resolves to a local CPU wheel). A venv is reused while its
``.requirements`` file matches :data:`REQUIREMENTS`.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ["keras>=3.15,<3.16", "numpy>=2.0,<2.5", "faiss-cpu>=1.15,<1.16"]
REQUIREMENTS = {"jax": CORE + ["jax[cpu]>=0.10,<0.11"], "torch": CORE + ["torch==2.13.0"]}


def python_of(backend):
    return os.path.join(ROOT, f".venv-{backend}", "bin", "python")


def ensure(backend, timeout=1800):
    """Path of the backend venv's python, creating / updating the venv if needed."""
    venv = os.path.join(ROOT, f".venv-{backend}")
    stamp = os.path.join(venv, ".requirements")
    wanted = "\n".join(REQUIREMENTS[backend])
    if os.path.exists(stamp) and open(stamp).read() == wanted:
        return python_of(backend)
    if not os.path.exists(python_of(backend)):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    subprocess.run(
        [python_of(backend), "-m", "pip", "install", "-q", *REQUIREMENTS[backend]], check=True, timeout=timeout
    )
    with open(stamp, "w") as f:
        f.write(wanted)
    return python_of(backend)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(REQUIREMENTS):
        print(ensure(name))
