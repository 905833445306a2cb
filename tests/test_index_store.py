"""`keras-roadmap index build|add|remove` and `search --index IDX`: an index folder that lives with
its gallery (faiss IndexIDMap2 + manifest + the embedder), updated atomically; bad input is one line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO
from serving_fixtures import with_contract, with_projection, write_gallery, write_image

from keras_roadmap.cli import main
from keras_roadmap.serving import IndexStore

# Runs the CLI, then reports whether TensorFlow/Keras got imported.
_NO_TF = """
import sys
from keras_roadmap.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("HEAVY=" + ",".join(heavy[:3]), file=sys.stderr)
sys.exit(code)
"""


def cli(*argv, env=None):
    """`keras-roadmap ARGV` in a fresh interpreter (asserts it imported no TensorFlow/Keras)."""
    result = subprocess.run(
        [sys.executable, "-c", _NO_TF, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
    )
    assert "HEAVY=\n" in result.stderr + "\n", result.stderr
    return result


def one_error_line(capsys, rc, *fragments):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("keras-roadmap") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def search_json(capsys, index, queries, k, *extra):
    capsys.readouterr()
    assert main(["search", "--index", str(index), *map(str, queries), "--k", str(k), "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    return root, write_gallery(root / "photos")


def test_build_then_search_needs_only_the_index_folder(onnx_embedder, gallery, tmp_path, capsys):
    root, images = gallery
    idx = tmp_path / "photos.idx"
    built = cli("index", "build", "--model", onnx_embedder, "--images", root / "photos", "--out", idx)
    assert built.returncode == 0, built.stderr
    assert "indexed 9 images (3 classes, dim 16, flat index)" in built.stdout

    manifest = json.loads((idx / "manifest.json").read_text())
    assert [e["id"] for e in manifest["entries"]] == list(range(9))
    assert sorted(e["path"] for e in manifest["entries"]) == sorted(str(p) for p in images)
    assert {e["label"] for e in manifest["entries"]} == {"class_0", "class_1", "class_2"}
    assert manifest["embedder"]["contract"]["output_dim"] == 16
    assert manifest["embedder"]["contract"]["preprocessing"]["image_size"] == 32
    copy = idx / manifest["embedder"]["file"]
    assert copy.read_bytes() == onnx_embedder.read_bytes()
    import faiss

    index = faiss.read_index(str(idx / manifest["faiss_file"]))
    assert isinstance(index, faiss.IndexIDMap2) and index.ntotal == 9

    # The embedder is found through the folder: the original file may be gone.
    moved = tmp_path / "elsewhere.onnx"
    shutil.copy(onnx_embedder, moved)
    query = images[4]  # photos/class_1/img_4.jpg
    found = cli("search", "--index", idx, query, "--k", 3, "--format", "json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)[0]["results"]
    assert hits[0]["path"] == str(query) and hits[0]["label"] == "class_1"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[0]["score"] > hits[1]["score"] >= hits[2]["score"]
    capsys.readouterr()
    assert main(["search", "--index", str(idx), str(query), "--k", "3", "--model", str(moved)]) == 0  # still accepted
    table = capsys.readouterr()
    assert f"score {hits[0]['score']:.4f}  class class_1  id {hits[0]['id']:>6}  {query}" in table.out
    assert "warning" not in table.err  # the same bytes as the index's embedder


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_remove_then_add_back_gives_the_fresh_build_results(onnx_embedder, gallery, tmp_path, capsys, index_type):
    root, images = gallery
    fresh, updated = tmp_path / "fresh.idx", tmp_path / "updated.idx"
    for out in (fresh, updated):
        assert (
            main(
                [
                    "index",
                    "build",
                    "--model",
                    str(onnx_embedder),
                    "--images",
                    str(root / "photos"),
                    "--out",
                    str(out),
                    "--index-type",
                    index_type,
                ]
            )
            == 0
        )
    id_of = {e["path"]: e["id"] for e in IndexStore.open(str(updated), load_embedder=False).entries}
    assert main(["index", "remove", "--index", str(updated), str(images[2]), str(id_of[str(images[6])])]) == 0
    assert "2 removed" in capsys.readouterr().out  # one by path, one by id
    without = IndexStore.open(str(updated), load_embedder=False)
    assert without.size == 7 and {e["path"] for e in without.entries}.isdisjoint({str(images[2]), str(images[6])})
    assert main(["index", "add", "--index", str(updated), str(images[6]), str(images[2])]) == 0
    out = capsys.readouterr().out
    assert "added id 9" in out and "added id 10" in out  # ids are never reused
    after = search_json(capsys, updated, images, 9)
    expected = search_json(capsys, fresh, images, 9)
    for got, want in zip(after, expected, strict=True):
        assert [(h["path"], h["label"]) for h in got["results"]] == [(h["path"], h["label"]) for h in want["results"]]
        np.testing.assert_allclose(
            [h["score"] for h in got["results"]], [h["score"] for h in want["results"]], atol=1e-6
        )
    assert IndexStore.open(str(updated)).manifest["index_params"]["index_type"] == index_type


def test_csv_gallery_and_category_folders(onnx_embedder, gallery, tmp_path, capsys):
    root, images = gallery
    table = tmp_path / "split.csv"
    rows = ["label,path,split,is_query,is_gallery"]
    for i, path in enumerate(images):
        split = "train" if i < 3 else "validation"
        rows.append(
            f"{path.parent.name},{os.path.relpath(path, tmp_path)},{split},1,{int(i % 2 == 1) if i >= 3 else ''}"
        )
    table.write_text("\n".join(rows) + "\n")
    assert (
        main(["index", "build", "--model", str(onnx_embedder), "--images", str(table), "--out", str(tmp_path / "c")])
        == 0
    )
    assert "the 3 rows with is_gallery = 1 of 9" in capsys.readouterr().out
    entries = IndexStore.open(str(tmp_path / "c"), load_embedder=False).entries
    assert [e["path"] for e in entries] == [str(images[i]) for i in (3, 5, 7)]

    shop = tmp_path / "shop"
    for i in range(4):
        write_image(shop / ("shoes" if i < 2 else "bags") / f"model_{i % 2}" / f"{i}.jpg", i)
    assert (
        main(["index", "build", "--model", str(onnx_embedder), "--images", str(shop), "--out", str(tmp_path / "s")])
        == 0
    )
    later = write_image(shop / "bags" / "model_1" / "new.jpg", 7)
    assert main(["index", "add", "--index", str(tmp_path / "s"), str(later)]) == 0
    entries = IndexStore.open(str(tmp_path / "s"), load_embedder=False).entries
    assert {(e["label"], e["category"]) for e in entries} == {
        ("shoes/model_0", "shoes"),
        ("shoes/model_1", "shoes"),
        ("bags/model_0", "bags"),
        ("bags/model_1", "bags"),
    }
    assert entries[-1]["path"] == str(later) and entries[-1]["label"] == "bags/model_1"


@pytest.mark.slow
def test_a_kill_mid_update_leaves_the_old_index(onnx_embedder, gallery, tmp_path, capsys):
    root, images = gallery
    idx = tmp_path / "idx"
    assert (
        main(["index", "build", "--model", str(onnx_embedder), "--images", str(root / "photos"), "--out", str(idx)])
        == 0
    )
    old_manifest = (idx / "manifest.json").read_text()
    new_image = write_image(tmp_path / "new" / "x.jpg", 11)
    mark = tmp_path / "stalled"
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        KERAS_ROADMAP_TEST_STALL_IN="index_manifest",
        KERAS_ROADMAP_TEST_STALL_MARK=str(mark),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_roadmap.cli", "index", "add", "--index", str(idx), str(new_image)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mark.exists(), "the update never reached the manifest write"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert any(name.startswith(".partial-") for name in os.listdir(idx))  # killed while writing the manifest
    assert (idx / "manifest.json").read_text() == old_manifest
    store = IndexStore.open(str(idx))
    assert store.size == 9 and str(new_image) not in {e["path"] for e in store.entries}
    assert search_json(capsys, idx, [images[0]], 1)[0]["results"][0]["path"] == str(images[0])
    # The next update completes and clears what the killed one left.
    assert main(["index", "add", "--index", str(idx), str(new_image)]) == 0
    names = sorted(os.listdir(idx))
    assert not [n for n in names if n.startswith(".partial-")]
    assert [n for n in names if n.endswith(".faiss")] == [json.loads((idx / "manifest.json").read_text())["faiss_file"]]
    assert IndexStore.open(str(idx)).size == 10


def test_bad_input_is_one_line_and_changes_nothing(onnx_embedder, gallery, tmp_path, capsys):
    root, images = gallery
    idx = tmp_path / "idx"
    assert (
        main(["index", "build", "--model", str(onnx_embedder), "--images", str(root / "photos"), "--out", str(idx)])
        == 0
    )
    capsys.readouterr()
    manifest = (idx / "manifest.json").read_text()
    known = {e["path"]: e["id"] for e in json.loads(manifest)["entries"]}[str(images[3])]

    copy = tmp_path / "copy.jpg"
    shutil.copy(images[3], copy)
    one_error_line(
        capsys,
        main(["index", "add", "--index", str(idx), str(images[3])]),
        str(images[3]),
        f"already in the index as id {known}",
        "--skip-existing",
    )
    one_error_line(capsys, main(["index", "add", "--index", str(idx), str(copy)]), "same bytes as", str(images[3]))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    one_error_line(capsys, main(["index", "add", "--index", str(idx), str(junk)]), f"cannot decode image {junk}")
    assert (idx / "manifest.json").read_text() == manifest
    assert main(["index", "add", "--index", str(idx), str(images[3]), "--skip-existing"]) == 0
    assert f"already in the index as id {known}; skipped" in capsys.readouterr().out
    assert (idx / "manifest.json").read_text() == manifest

    one_error_line(
        capsys, main(["index", "remove", "--index", str(idx), "42", "nope.jpg"]), "not in the index", "42, nope.jpg"
    )
    assert (idx / "manifest.json").read_text() == manifest

    other_size = with_contract(onnx_embedder, tmp_path / "other_size.onnx", image_size=24)
    one_error_line(
        capsys,
        main(["search", "--index", str(idx), str(images[0]), "--model", str(other_size)]),
        "preprocesses differently (image_size 24, the index's embedder 32)",
        str(onnx_embedder),
    )
    other_dim = with_projection(onnx_embedder, tmp_path / "other_dim.onnx", dim=5)
    one_error_line(
        capsys,
        main(["search", "--index", str(idx), str(images[0]), "--model", str(other_dim)]),
        "outputs 5-d embeddings but the index holds 16-d ones",
    )

    one_error_line(
        capsys,
        main(["search", "--index", str(tmp_path / "missing"), str(images[0])]),
        "no keras-roadmap index there",
        "index build",
    )
    one_error_line(
        capsys,
        main(["index", "build", "--model", str(onnx_embedder), "--images", str(root / "photos"), "--out", str(root)]),
        "non-empty folder that holds no keras-roadmap index",
    )
    broken = tmp_path / "broken"
    shutil.copytree(idx, broken)
    faiss_file = broken / json.loads(manifest)["faiss_file"]
    faiss_file.write_bytes(faiss_file.read_bytes()[:40])
    one_error_line(capsys, main(["search", "--index", str(broken), str(images[0])]), str(faiss_file), "damaged")
    faiss_file.unlink()
    one_error_line(capsys, main(["search", "--index", str(broken), str(images[0])]), str(faiss_file), "missing")
    (broken / "manifest.json").write_text(manifest[: len(manifest) // 2])
    one_error_line(capsys, main(["index", "add", "--index", str(broken), str(copy)]), "manifest.json is damaged")
    assert (
        main(["index", "build", "--model", str(onnx_embedder), "--images", str(root / "photos"), "--out", str(broken)])
        == 0
    )  # what the message says to do works in place
    assert IndexStore.open(str(broken)).size == 9
    capsys.readouterr()
    embedder_copy = idx / json.loads(manifest)["embedder"]["file"]
    embedder_copy.write_bytes(embedder_copy.read_bytes()[:-10])
    one_error_line(capsys, main(["search", "--index", str(idx), str(images[0])]), "does not match the SHA-256")
    assert search_json(capsys, idx, [images[0]], 1, "--model", str(onnx_embedder))[0]["results"][0]["id"] == 0

    one_error_line(
        capsys,
        main(["index", "--model", str(onnx_embedder), "--images", str(root)]),
        "index build --model M --images GALLERY --out IDX",
        "missing: --index, --ids",
    )
    single = tmp_path / "old.faiss"
    single.write_bytes(b"")
    one_error_line(capsys, main(["search", "--index", str(single), str(images[0])]), "is a file", "--ids")


def test_two_writers_queue_on_the_lock(onnx_embedder, gallery, tmp_path, capsys):
    import fcntl
    import threading

    from keras_roadmap.serving import add_files

    root, _ = gallery
    idx = tmp_path / "idx"
    assert (
        main(["index", "build", "--model", str(onnx_embedder), "--images", str(root / "photos"), "--out", str(idx)])
        == 0
    )
    new = write_image(tmp_path / "late" / "y.jpg", 12)
    with open(idx / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer is busy
        writer = threading.Thread(target=add_files, args=(str(idx), [str(new)]))
        writer.start()
        writer.join(timeout=1.5)
        assert writer.is_alive() and IndexStore.open(str(idx), load_embedder=False).size == 9
        fcntl.flock(held, fcntl.LOCK_UN)
    writer.join(timeout=60)
    assert not writer.is_alive() and IndexStore.open(str(idx), load_embedder=False).size == 10


@pytest.mark.parametrize("argv", [("index", "build", "--help"), ("index", "add", "--help"), ("serve", "--help")])
def test_new_help_is_fast_and_imports_no_tensorflow_or_fastapi(argv):
    from test_cli import probe

    out = probe(*argv)
    assert "HEAVY=\n" in out and float(out.split("SECONDS=")[1]) < 1.0, out
    assert "usage: keras-roadmap " + " ".join(argv[:-1]) in out
