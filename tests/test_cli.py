"""The `keras-roadmap` command line: fast help without TensorFlow, --version, one-line errors."""

import os
import subprocess
import sys
import time

import pytest

from keras_roadmap import __version__
from keras_roadmap.cli import RECIPES, cli_spelling, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBCOMMANDS = ("train", "recipes", "export", "index", "search")

# Runs the CLI in this interpreter, then prints whether TensorFlow or Keras got imported.
_PROBE = """
import sys, time
started = time.perf_counter()
from keras_roadmap.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert exc.code == 0, exc.code
heavy = sorted(m for m in sys.modules if m in ("tensorflow", "keras") or m.startswith(("tensorflow.", "keras.")))
print("HEAVY=" + ",".join(heavy[:3]))
print(f"SECONDS={time.perf_counter() - started:.3f}")
"""


def probe(*argv):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("argv", [("--help",), ("--version",)] + [(c, "--help") for c in SUBCOMMANDS])
def test_help_is_fast_and_imports_no_tensorflow(argv):
    out = probe(*argv)
    assert "HEAVY=\n" in out, out
    seconds = float(out.split("SECONDS=")[1])
    assert seconds < 1.0, out  # TensorFlow alone takes ~10 s to import here
    if argv == ("--version",):
        assert f"keras-roadmap {__version__}" in out
    elif argv == ("--help",):
        assert all(c in out for c in SUBCOMMANDS)
    else:
        assert "usage: keras-roadmap " + argv[0] in out


def test_train_help_lists_every_recipe_and_the_verbose_flag():
    out = probe("train", "--help")
    assert all(name in out for name in RECIPES) and "--verbose" in out and "--smoke" in out
    assert "--print-config" in out


def test_recipes_lists_every_recipe_with_its_line_without_tensorflow():
    from keras_roadmap.recipes.catalog import RECIPES as TABLE
    from keras_roadmap.recipes.catalog import config_path

    out = probe("recipes")
    assert "HEAVY=\n" in out, out
    for name, line in TABLE.items():
        assert f"  {name} " in out and line in out, out
        assert config_path(name).is_file()  # every listed recipe has its config in the package


def test_the_library_does_not_import_the_cli():
    """No import circle: keras_roadmap.recipes (the library) never imports keras_roadmap.cli."""
    import ast
    import pathlib

    for path in (pathlib.Path(REPO) / "keras_roadmap" / "recipes").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n == "keras_roadmap.cli" or n.startswith("keras_roadmap.cli.")], path


def _one_line(capsys, rc, *fragments, code=2):
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1 and ": error:" in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--format", "onnx"])
    _one_line(capsys, exc.value.code, "keras-roadmap export: error:", "--model", "--help")
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    _one_line(capsys, exc.value.code, "invalid choice")


def test_out_under_a_regular_file(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    model = tmp_path / "m.keras"
    model.write_text("not used")
    rc = main(["export", "--model", str(model), "--format", "onnx", "--out", str(blocker / "m.onnx")])
    _one_line(capsys, rc, "is a file, not a directory", str(blocker))
    rc = main(["train", "cub", "--smoke", "--out", str(blocker / "run")])
    _one_line(capsys, rc, "is a file, not a directory")
    rc = main(
        [
            "index",
            "--model",
            str(model),
            "--images",
            str(tmp_path),
            "--index",
            str(blocker / "i.faiss"),
            "--ids",
            str(tmp_path / "i.json"),
        ]
    )
    _one_line(capsys, rc, "--index", "is a file, not a directory")


def test_unknown_recipe_and_format(tmp_path, capsys):
    rc = main(["train", "mnist", "--out", str(tmp_path / "r")])
    _one_line(capsys, rc, "unknown recipe 'mnist'", "glyphs")
    rc = main(["export", "--model", str(tmp_path / "m.keras"), "--format", "tflite", "--out", str(tmp_path / "x")])
    _one_line(capsys, rc, "unknown format 'tflite'", "savedmodel")


def test_hints_use_the_cli_spelling():
    message = (
        "with_preprocessing=True and the model's input size is dynamic: pass image_size "
        "(e.g. image_size=224, or --image-size 224 on the command line)."
    )
    assert "image_size" not in cli_spelling(message)
    assert "--image-size 224" in cli_spelling(message) and "--with-preprocessing" in cli_spelling(message)
    assert cli_spelling("pass image_size=32 (or leave it out).") == "pass --image-size 32 (or leave it out)."
    assert cli_spelling("pass atol=0.01 to accept it.") == "pass --atol 0.01 to accept it."


def test_quiet_import_drops_tensorflow_startup_lines():
    code = "from keras_roadmap._quiet import import_tensorflow; import_tensorflow(); import sys; print('ok')"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO)
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert "absl::InitializeLog" not in result.stderr and "oneDNN" not in result.stderr, result.stderr
    assert time.perf_counter() - started < 300
