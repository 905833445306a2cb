"""`keras-roadmap index` / `search` end to end (and the export/*.py wrappers), no TensorFlow at serving time."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_roadmap import export as ex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "export")

# Runs the CLI (or a script as __main__) and then reports whether TensorFlow/Keras got imported.
_WRAPPER = """
import runpy, sys
target, args = sys.argv[1], sys.argv[2:]
code = 0
try:
    if target.endswith(".py"):
        sys.argv = [target] + args
        runpy.run_path(target, run_name="__main__")
    else:
        from keras_roadmap.cli import main
        code = main([target] + args)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
loaded = sorted(m for m in sys.modules if m in ("tensorflow", "keras") or m.startswith(("tensorflow.", "keras.")))
print("HEAVY_MODULES=" + ",".join(loaded[:3]), file=sys.stderr)
sys.exit(code)
"""


def run_script(command, *args):
    """Run `keras-roadmap <command>` (or export/<command>.py) in a fresh interpreter; assert it
    never imported TensorFlow/Keras."""
    target = os.path.join(SCRIPTS, command) if command.endswith(".py") else command
    result = subprocess.run(
        [sys.executable, "-c", _WRAPPER, target, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert "HEAVY_MODULES=\n" in result.stderr + "\n", result.stderr
    return result


def _write_images(root):
    """Eight JPEGs in a class-folder layout, distinct colours/patterns and several sizes."""
    rng = np.random.default_rng(0)
    paths = []
    sizes = [(48, 64), (64, 48), (40, 40), (48, 64)]
    for i in range(8):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 256, 3)
        freq = 1 + i
        pattern = (np.sin(xx * freq / 7.0 + i) * np.cos(yy * (9 - i) / 9.0) + 1) * 100
        pixels = np.clip(base[None, None, :] * 0.6 + pattern[..., None] * (i % 3 + 1) / 3, 0, 255)
        folder = root / f"class_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    keras.utils.set_random_seed(4)
    x = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(x)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x, keras.layers.Dense(16)(h))
    model_path = root / "embedder.onnx"
    ex.to_onnx(model, model_path, with_preprocessing=True)  # L2 left to the serving side
    images = _write_images(root / "photos")
    index, ids = root / "out" / "photos.faiss", root / "out" / "photos.json"
    result = run_script(
        "index", "--model", model_path, "--images", root / "photos", "--index", index, "--ids", ids, "--batch-size", 2
    )
    assert result.returncode == 0, result.stderr
    assert "indexed 8 images (dim 16, flat index)" in result.stdout
    return {"root": root, "model": model_path, "images": images, "index": index, "ids": ids, "keras_model": model}


def test_index_and_id_map_contents(deployment):
    import faiss

    index = faiss.read_index(str(deployment["index"]))
    assert index.ntotal == 8 and index.d == 16
    vectors = index.reconstruct_n(0, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    id_map = json.loads(deployment["ids"].read_text())
    paths = [os.path.join(id_map["image_root"], e["path"]) for e in id_map["ids"]]
    assert sorted(paths) == sorted(str(p) for p in deployment["images"])
    assert [e["id"] for e in id_map["ids"]] == list(range(8))

    # Row i really is image i, embedded like the Keras model would (resize + crop + L2).
    from keras_roadmap.export import imagenet_eval_preprocess

    i = 5
    pixels = np.asarray(Image.open(paths[i]).convert("RGB"))[None]
    expected = deployment["keras_model"].predict_on_batch(imagenet_eval_preprocess(pixels, 32))
    np.testing.assert_allclose(vectors[i], expected[0] / np.linalg.norm(expected), atol=1e-4)


def test_each_query_finds_itself_first(deployment, tmp_path):
    queries = [deployment["images"][1], deployment["images"][6]]
    out_json = tmp_path / "results.json"
    result = run_script(
        "search",
        *queries,
        "--model",
        deployment["model"],
        "--index",
        deployment["index"],
        "--ids",
        deployment["ids"],
        "--k",
        3,
        "--json",
        out_json,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(out_json.read_text())
    assert [r["query"] for r in results] == [str(q) for q in queries]
    for query, entry in zip(queries, results, strict=False):
        hits = entry["results"]
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert hits[0]["path"] == str(query)
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert hits[0]["score"] > hits[1]["score"] >= hits[2]["score"]
        assert f"score {hits[0]['score']:.4f}" in result.stdout
    assert "query: " + str(queries[0]) in result.stdout


def test_csv_id_map_and_folder_query(deployment, tmp_path):
    ids_csv, index = tmp_path / "ids.csv", tmp_path / "i.faiss"
    photos = deployment["root"] / "photos"
    assert (
        run_script(
            "index", "--model", deployment["model"], "--images", photos, "--index", index, "--ids", ids_csv
        ).returncode
        == 0
    )
    with open(ids_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["id"]) for r in rows] == list(range(8))
    result = run_script(
        "search",
        photos / "class_2",
        "--model",
        deployment["model"],
        "--index",
        index,
        "--ids",
        ids_csv,
        "--k",
        20,
        "--json",
        tmp_path / "r.json",
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert len(results) == 2  # class_2 holds img_2 and img_5
    for entry in results:
        assert len(entry["results"]) == 8  # k is capped at the index size
        assert entry["results"][0]["path"] == os.path.abspath(entry["query"])


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_index_types_keep_their_settings(deployment, tmp_path, index_type):
    import faiss

    index, ids = tmp_path / "i.faiss", tmp_path / "ids.json"
    result = run_script(
        "index",
        "--model",
        deployment["model"],
        "--images",
        deployment["root"] / "photos",
        "--index",
        index,
        "--ids",
        ids,
        "--index-type",
        index_type,
    )
    assert result.returncode == 0, result.stderr
    assert f"{index_type} index" in result.stdout
    built = faiss.read_index(str(index))
    assert (faiss.try_extract_index_ivf(built) is not None) == (index_type == "ivf")
    assert hasattr(built, "hnsw") == (index_type == "hnsw")
    settings = json.loads((tmp_path / "i.faiss.json").read_text())
    assert settings["index_type"] == index_type and settings["ntotal"] == 8
    query = deployment["images"][3]
    result = run_script(
        "search",
        query,
        "--model",
        deployment["model"],
        "--index",
        index,
        "--ids",
        ids,
        "--k",
        2,
        "--json",
        tmp_path / "r.json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())[0]["results"][0]["path"] == str(query)


def test_unknown_index_type_is_one_line(deployment, tmp_path):
    result = run_script(
        "index",
        "--model",
        deployment["model"],
        "--images",
        deployment["root"] / "photos",
        "--index",
        tmp_path / "i.faiss",
        "--ids",
        tmp_path / "ids.json",
        "--index-type",
        "lsh",
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("HEAVY_MODULES=")]
    assert len(lines) == 1 and "flat, ivf, hnsw" in lines[0] and "lsh" in lines[0], result.stderr


def test_serving_errors_are_one_line(deployment, tmp_path):
    common = ["--index", deployment["index"], "--ids", deployment["ids"]]
    missing = run_script("search", tmp_path / "nope.jpg", "--model", deployment["model"], *common)
    assert missing.returncode == 2 and "error: image not found" in missing.stderr
    assert "Traceback" not in missing.stderr

    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    bad = run_script("search", corrupt, "--model", deployment["model"], *common)
    assert bad.returncode == 2 and f"cannot decode image {corrupt}" in bad.stderr

    # A model exported without preprocessing cannot take raw images: say how to fix it.
    x = keras.Input((8,))
    plain = tmp_path / "plain.onnx"
    ex.to_onnx(keras.Model(x, keras.layers.Dense(4)(x)), plain)
    raw = run_script(
        "index",
        "--model",
        plain,
        "--images",
        deployment["root"] / "photos",
        "--index",
        tmp_path / "i.faiss",
        "--ids",
        tmp_path / "i.json",
    )
    assert raw.returncode == 2 and "--with-preprocessing" in raw.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_script(
        "index",
        "--model",
        deployment["model"],
        "--images",
        empty,
        "--index",
        tmp_path / "i.faiss",
        "--ids",
        tmp_path / "i.json",
    )
    assert none.returncode == 2 and "no images" in none.stderr

    # Another 16-d model than the index was built with: a warning; another dimension: an error.
    x = keras.Input((32, 32, 3))
    other = keras.Model(x, keras.layers.Dense(16)(keras.layers.GlobalAveragePooling2D()(x)))
    other_dim = tmp_path / "other.onnx"
    ex.to_onnx(other, other_dim, with_preprocessing=True)
    small = keras.Model(x, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x)))
    small_path = tmp_path / "small.onnx"
    ex.to_onnx(small, small_path, with_preprocessing=True)
    query = deployment["images"][0]
    warned = run_script("search", query, "--model", other_dim, *common)
    assert warned.returncode == 0 and "different ONNX file" in warned.stderr
    mismatch = run_script("search", query, "--model", small_path, *common)
    assert mismatch.returncode == 2 and "16-d vectors but the model outputs 5-d" in mismatch.stderr


def test_old_script_wrappers_and_class_labels(deployment, tmp_path):
    index, ids = tmp_path / "w.faiss", tmp_path / "w.json"
    built = run_script(
        "embed_and_index.py",
        "--model",
        deployment["model"],
        "--images",
        deployment["root"] / "photos",
        "--index",
        index,
        "--ids",
        ids,
    )
    assert built.returncode == 0 and "indexed 8 images" in built.stdout, built.stderr
    query = deployment["images"][4]  # photos/class_1/img_4.jpg
    found = run_script(
        "search.py",
        query,
        "--model",
        deployment["model"],
        "--index",
        index,
        "--ids",
        ids,
        "--k",
        2,
        "--json",
        tmp_path / "r.json",
    )
    assert found.returncode == 0, found.stderr
    first = json.loads((tmp_path / "r.json").read_text())[0]["results"][0]
    assert first["label"] == "class_1" and "class class_1" in found.stdout


def test_contract_key_matches_the_exporter():
    from keras_roadmap.serving import CONTRACT_KEY

    assert CONTRACT_KEY == ex.CONTRACT_KEY


def test_serving_import_pulls_no_tensorflow():
    code = (
        "import sys, keras_roadmap.serving; "
        "print(any(m in ('tensorflow', 'keras') or m.startswith(('tensorflow.', 'keras.')) for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO)
    )
    assert out.stdout.strip() == "False", out.stderr
