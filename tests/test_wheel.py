"""The package as a user gets it: the sdist and wheel build, pass `twine check`, and the wheel
alone, installed in a fresh virtual environment and run from a folder outside the clone, lists
the recipes, prints a config, runs `keras-roadmap train glyphs --smoke` and the README's example.

The fresh venv gets the wheel with `--no-deps --no-index`, and the test environment's
site-packages at the end of its `sys.path` for the dependencies (TensorFlow, ...): no download
(tests never touch the network) and seconds instead of minutes. What this proves is that the
*wheel* carries keras-roadmap's own files and entry point: the clone is not on the venv's path
(the test environment's editable install is an import hook that the venv does not run, and the
commands run from a folder outside the clone), and the tests check that every `keras_roadmap`
module is imported from the venv. Whether the declared dependency ranges install from the
registry is not tested here (the lowest-versions target does that).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from keras_roadmap import __version__
from keras_roadmap.recipes.catalog import RECIPES

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
# Not part of what a clone holds (environments, outputs, caches): left out of the build copy.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".whl"
)


def _run(command, *, cwd, timeout, env=None):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, (
        f"{command}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`python -m build` (sdist, then the wheel from the sdist) on a copy of the source tree."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    # --no-isolation: build with this environment's setuptools instead of downloading one.
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(root / "dist"), str(source)],
        cwd=root,
        timeout=300,
    )
    wheels, sdists = sorted((root / "dist").glob("*.whl")), sorted((root / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(root / "dist")
    return wheels[0], sdists[0]


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    """A fresh venv holding the wheel; returns (its prefix, env for its commands, a cwd outside the clone)."""
    wheel, _ = built
    root = tmp_path_factory.mktemp("venv")
    prefix = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], cwd=root, timeout=120)
    python = prefix / "bin" / "python"
    site = pathlib.Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root, timeout=60
        ).stdout.strip()
    )
    # The dependencies: this environment's site-packages, appended to the venv's sys.path by a
    # plain path line. Python does not run the .pth files of a folder added that way, so this
    # environment's editable keras-roadmap (a .pth import hook) does not reach the venv.
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "_test_environment.pth").write_text("".join(f"{path}\n" for path in ours))
    # This environment's pip (reached through that path) installs into the venv; --ignore-installed:
    # it sees this environment's keras-roadmap metadata too.
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--no-compile",
            "-q",
            str(wheel),
        ],
        cwd=root,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_BACKEND="tensorflow",
        MPLBACKEND="Agg",
    )
    work = root / "elsewhere"  # not the clone: nothing is importable from the working directory
    work.mkdir()
    return prefix, env, work


# Appended to the README example: where every keras_roadmap module it loaded comes from.
_ORIGINS = """
import json, sys
print("ORIGINS=" + json.dumps({"prefix": sys.prefix, "files": {
    name: module.__file__ for name, module in sys.modules.items() if name.split(".")[0] == "keras_roadmap"}}))
"""


def test_wheel_files(built):
    wheel, sdist = built
    names = zipfile.ZipFile(wheel).namelist()
    source = sorted(str(p.relative_to(REPO)) for p in (REPO / "keras_roadmap").rglob("*.py"))
    missing = sorted(set(source) - set(names))
    assert not missing, f"modules left out of the wheel: {missing}"
    configs = sorted(n for n in names if n.startswith("keras_roadmap/recipes/configs/"))
    assert configs == [f"keras_roadmap/recipes/configs/{name}.yaml" for name in sorted(RECIPES)]
    assert "keras_roadmap/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "recipes/", "benchmarks/")) or "/tests/" in n]
    assert wheel.name == f"keras_roadmap-{__version__}-py3-none-any.whl"
    metadata = zipfile.ZipFile(wheel).read(f"keras_roadmap-{__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {__version__}\n" in metadata
    assert (
        "keras-roadmap = keras_roadmap.cli:main"
        in zipfile.ZipFile(wheel).read(f"keras_roadmap-{__version__}.dist-info/entry_points.txt").decode()
    )
    assert sdist.name == f"keras_roadmap-{__version__}.tar.gz"


def test_twine_check_passes(built):
    result = _run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, built)], cwd=built[0].parent, timeout=120
    )
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_recipes_and_print_config_from_the_wheel(venv):
    import yaml

    prefix, env, work = venv
    command = str(prefix / "bin" / "keras-roadmap")  # the wheel's entry point
    before = sorted(work.iterdir())
    listing = _run([command, "recipes"], cwd=work, timeout=60, env=env).stdout
    for name, line in RECIPES.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(line)}$", listing, re.M), listing
    printed = _run([command, "train", "glyphs", "--print-config"], cwd=work, timeout=300, env=env).stdout
    installed = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    config = installed / "keras_roadmap" / "recipes" / "configs" / "glyphs.yaml"
    assert str(config) in printed.splitlines()[0]  # the wheel's own copy of the config
    assert yaml.safe_load(printed) == yaml.safe_load(config.read_text())
    assert sorted(work.iterdir()) == before  # listing and printing wrote nothing


def test_glyphs_smoke_run_from_the_wheel(venv):
    prefix, env, work = venv
    out = work / "glyphs_smoke"
    result = _run(
        [str(prefix / "bin" / "keras-roadmap"), "train", "glyphs", "--smoke", "--out", str(out), "--verbose", "2"],
        cwd=work,
        timeout=600,
        env=env,
    )
    assert "SMOKE MODE" in result.stdout and "Done in" in result.stdout, result.stdout
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["dataset"] == "glyphs" and metrics["smoke"] is True
    assert 0.0 <= metrics["metrics"]["map@r"] <= 1.0
    assert (out / "embedder.onnx").stat().st_size > 0 and (out / "best_embedder.keras").is_file()
    assert metrics["metrics"]["num_queries"] > 100
    assert "Epoch 2/2" in result.stdout and "Embedded glyphs/test" in result.stdout
    tree = out / "glyph_images"
    train_classes = {p.name for p in (tree / "train").iterdir()}
    test_classes = {p.name for p in (tree / "test").iterdir()}
    assert train_classes and test_classes and not train_classes & test_classes  # unseen classes
    # The served search of an unseen glyph, through the wheel's CLI.
    cli = str(prefix / "bin" / "keras-roadmap")
    model, index, ids = str(out / "embedder.onnx"), str(out / "t.faiss"), str(out / "t.json")
    _run(
        [cli, "index", "--model", model, "--images", str(tree / "test"), "--index", index, "--ids", ids],
        cwd=work,
        timeout=300,
        env=env,
    )
    query = sorted((tree / "test").rglob("*.png"))[0]
    found = _run(
        [cli, "search", str(query), "--model", model, "--index", index, "--ids", ids, "--k", "5"],
        cwd=work,
        timeout=300,
        env=env,
    )
    lines = found.stdout.splitlines()
    assert sum(line.strip().startswith(("1.", "2.", "3.", "4.", "5.")) for line in lines) == 5, found.stdout
    assert f"class {query.parent.name}" in lines[-5] and str(query) in lines[-5]  # itself first


def test_readme_python_example_runs_against_the_wheel(venv):
    prefix, env, work = venv
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    script = work / "readme_example.py"
    script.write_text(code + _ORIGINS, encoding="utf-8")
    result = _run([str(prefix / "bin" / "python"), str(script)], cwd=work, timeout=600, env=env)
    printed, origins = result.stdout.rsplit("ORIGINS=", 1)
    assert printed.strip(), "the README example printed nothing"
    origins = json.loads(origins)
    assert pathlib.Path(origins["prefix"]) == prefix
    # Every keras_roadmap module the example used is the installed wheel's.
    outside = {n: f for n, f in origins["files"].items() if not pathlib.Path(f).is_relative_to(prefix)}
    assert origins["files"] and not outside, outside or origins
