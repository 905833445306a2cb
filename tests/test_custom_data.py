"""A user's own images: folder / CSV readers, image checks, the class-disjoint split, prepare."""

import io
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from keras_roadmap import cli
from keras_roadmap.data import class_split, custom
from keras_roadmap.data.presets import TRANSPARENT_BACKGROUND
from keras_roadmap.errors import DatasetFormatError
from keras_roadmap.samplers import FixedStepsSampler, MPerClassSampler

RNG = np.random.default_rng(0)


def png(path, shape=(12, 10, 3), mode=None, **save):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    image = Image.fromarray(pixels, mode) if mode else Image.fromarray(pixels)
    image.save(path, **save)
    return path


def folder(root, classes=6, per_class=3, prefix="class"):
    for c in range(classes):
        for i in range(per_class):
            png(pathlib.Path(root) / f"{prefix}{c}" / f"{i}.png")
    return pathlib.Path(root)


# --- folders -------------------------------------------------------------------------------


def test_folder_layout_extensions_and_skipped_files(tmp_path):
    root = folder(tmp_path / "d", classes=2, per_class=1)
    png(root / "class0" / "x.webp", format="WEBP")
    png(root / "class0" / "y.JPG", format="JPEG")
    (root / "class0" / "notes.txt").write_text("x")
    png(root / "class1" / ".hidden.png")
    png(root / ".cache" / "a" / "0.png")
    images = custom.read_images(root)
    assert images.layout == "folder"
    assert sorted(pathlib.Path(p).name for p in images.paths) == ["0.png", "0.png", "x.webp", "y.JPG"]
    assert set(images.labels) == {"class0", "class1"}
    reasons = {pathlib.Path(p).name: why for p, why in images.skipped}
    assert "not an image extension" in reasons["notes.txt"]
    assert "hidden" in reasons[".hidden.png"] and "hidden" in reasons[".cache"]


def test_category_layout_names_classes_by_category(tmp_path):
    for category in ("shoes", "bags"):
        folder(tmp_path / "d" / category, classes=2, per_class=2, prefix="item")
    images = custom.read_images(tmp_path / "d")
    assert images.layout == "folder+category"
    assert {(r.label, r.category) for r in images.records} == {
        ("bags/item0", "bags"),
        ("bags/item1", "bags"),
        ("shoes/item0", "shoes"),
        ("shoes/item1", "shoes"),
    }


def test_mixed_layout_and_symlink_loop_and_missing_path(tmp_path):
    root = folder(tmp_path / "d", classes=2, per_class=1)
    png(root / "class0" / "sub" / "0.png")
    with pytest.raises(DatasetFormatError, match="class0: holds both images and sub-folders"):
        custom.read_images(root)
    loop = folder(tmp_path / "l", classes=2, per_class=1)
    os.symlink(loop / "class0", loop / "class0" / "again")
    with pytest.raises(DatasetFormatError, match="symlink loop"):
        custom.read_images(loop)
    with pytest.raises(DatasetFormatError, match="no such folder or CSV"):
        custom.read_images(tmp_path / "nothing")


# --- CSV -----------------------------------------------------------------------------------


def write_csv(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_relative_paths_unicode_and_flags(tmp_path):
    png(tmp_path / "data" / "imgs" / "é a.png")
    png(tmp_path / "data" / "imgs" / "b.png")
    csv_path = write_csv(
        tmp_path / "data" / "df.csv",
        "label,path,split,is_query,is_gallery,category\n"
        "chaise longue,imgs/é a.png,train,,,meubles\n"
        "7,imgs/b.png,validation,1,0,\n",
    )
    images = custom.read_images(csv_path)
    first, second = images.records
    assert first.path == str(tmp_path / "data" / "imgs" / "é a.png") and first.label == "chaise longue"
    assert first.category == "meubles" and first.split == "train" and first.is_query is None
    assert (
        second.label == "7" and second.split == "validation" and (second.is_query, second.is_gallery) == (True, False)
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ("label,path,split\nx,a.png,train\n", "missing column.*is_query, is_gallery"),
        (
            "label,path,split,is_query,is_gallery\nx,a.png,holdout,,\n",
            r"df.csv:2: column `split` must be train or validation",
        ),
        ("label,path,split,is_query,is_gallery\nx,nope.png,train,,\n", "1 listed image.*do not exist.*nope.png"),
        (
            "label,path,split,is_query,is_gallery\nx,a.png,train,,\ny,a.png,train,,\n",
            r"df.csv:3: column `path` 'a.png' is already listed on line 2",
        ),
        ("label,path,split,is_query,is_gallery\n,a.png,train,,\n", r"df.csv:2: column `label` is empty"),
        ("label,path,split,is_query,is_gallery\n3.0,a.png,train,,\n", r"df.csv:2: column `label` is '3.0', a float"),
        (
            "label,path,split,is_query,is_gallery\nx,a.png,validation,maybe,1\n",
            r"df.csv:2: column `is_query` must be 1/0",
        ),
    ],
)
def test_bad_csv_names_the_line_and_column(tmp_path, body, message):
    png(tmp_path / "a.png")
    with pytest.raises(DatasetFormatError, match=message):
        custom.read_images(write_csv(tmp_path / "df.csv", body))


# --- decoding ------------------------------------------------------------------------------


def test_inspect_reports_conversions_and_bad_files(tmp_path):
    files = {
        "gray.png": lambda p: png(p, (8, 8)),
        "palette.gif": lambda p: Image.fromarray(RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8)).convert("P").save(p),
        "cmyk.jpg": lambda p: Image.fromarray(RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8)).convert("CMYK").save(p),
        "deep.png": lambda p: Image.fromarray(RNG.integers(0, 65535, (8, 8), dtype=np.uint16)).save(p),
        "rgba.png": lambda p: png(p, (8, 8, 4), "RGBA"),
        "anim.gif": lambda p: Image.new("RGB", (8, 8), "red").save(
            p, save_all=True, append_images=[Image.new("RGB", (8, 8), "blue")]
        ),
        "empty.jpg": lambda p: p.write_bytes(b""),
        "text.png": lambda p: p.write_text("not an image"),
        "cut.png": lambda p: p.write_bytes(_png_bytes()[:60]),
    }
    for name, make in files.items():
        make(tmp_path / name)
    checks = {pathlib.Path(c.path).name: c for c in custom.inspect_images([str(tmp_path / n) for n in files])}
    assert checks["gray.png"].conversions == ("grayscale -> RGB",)
    assert checks["cmyk.jpg"].conversions == ("CMYK -> RGB",)
    assert "16-bit" in checks["deep.png"].conversions[0]
    assert "transparency composited on (255, 255, 255)" in checks["rgba.png"].conversions[0]
    assert checks["anim.gif"].conversions[0].startswith("animated (2 frames): first frame")
    assert checks["palette.gif"].ok
    assert (checks["empty.jpg"].ok, checks["empty.jpg"].reason) == (False, "empty file (0 bytes)")
    assert not checks["text.png"].ok and "not an image" in checks["text.png"].reason
    assert not checks["cut.png"].ok and checks["cut.png"].reason
    assert checks["gray.png"].sha256 and checks["gray.png"].size == (8, 8)


def _png_bytes():
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_load_rgb_composites_alpha_on_the_background(tmp_path):
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (10, 20, 30, 0)  # fully transparent: the stored colour must not survive
    pixels[0, 1] = (10, 20, 30, 255)
    pixels[1, 0] = (0, 0, 0, 128)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    out = custom.load_rgb(tmp_path / "a.png")
    assert tuple(out[0, 0]) == TRANSPARENT_BACKGROUND
    assert tuple(out[0, 1]) == (10, 20, 30)
    expected = np.floor(np.asarray(TRANSPARENT_BACKGROUND) * (1 - 128 / 255) + 0.5)
    assert tuple(out[1, 0]) == tuple(expected.astype(int))


def test_tf_decoder_composites_as_pil_does(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from keras_roadmap.data.transforms import decode_image

    png(tmp_path / "rgba.png", (9, 7, 4), "RGBA")
    Image.fromarray(RNG.integers(0, 256, (9, 7, 2), dtype=np.uint8), "LA").save(tmp_path / "la.png")
    Image.fromarray(RNG.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert("P").save(
        tmp_path / "p.png", transparency=0
    )
    png(tmp_path / "rgba.webp", (9, 7, 4), "RGBA", format="WEBP", lossless=True)
    for name in ("rgba.png", "la.png", "p.png", "rgba.webp"):
        ours = decode_image(tf.io.read_file(str(tmp_path / name))).numpy()
        np.testing.assert_array_equal(ours, custom.load_rgb(tmp_path / name), err_msg=name)


# --- split ---------------------------------------------------------------------------------


def test_split_is_by_class_seeded_and_stratified(tmp_path):
    for category in ("a", "b"):
        folder(tmp_path / "d" / category, classes=6, per_class=2, prefix="c")
    png(tmp_path / "d" / "a" / "lone" / "0.png")
    images = custom.read_images(tmp_path / "d")
    result = class_split.split_by_class(images, test_classes=0.5, seed=3)
    sides = {}
    for r in result.images.records:
        sides.setdefault(r.label, set()).add(r.split)
    assert all(len(s) == 1 for s in sides.values())
    held = set(result.test_classes)
    assert sum(c.startswith("a/") for c in held) == 3 and sum(c.startswith("b/") for c in held) == 3
    lone = [r for r in result.images.records if r.label == "a/lone"][0]
    assert (lone.split, lone.is_query, lone.is_gallery) == ("validation", False, True)
    again = class_split.split_by_class(images, test_classes=0.5, seed=3)
    assert again.test_classes == result.test_classes
    other = {tuple(class_split.split_by_class(images, test_classes=0.5, seed=s).test_classes) for s in range(5)}
    assert len(other) > 1


@pytest.mark.parametrize(
    "make, fraction, message",
    [
        (lambda root: root.mkdir(), 0.5, "no images found"),
        (lambda root: folder(root, classes=1, per_class=3), 0.5, "found 1 class"),
        (lambda root: folder(root, classes=5, per_class=1), 0.5, "every one of the 5 classes has a single image"),
        (lambda root: folder(root, classes=5, per_class=2), 0.9, r"--test-classes 0.9 holds out 4 of the 5 classes"),
        (lambda root: folder(root, classes=5, per_class=2), 1.5, "strictly between 0 and 1"),
    ],
)
def test_split_refuses_what_cannot_be_measured(tmp_path, make, fraction, message):
    make(tmp_path / "d")
    with pytest.raises(DatasetFormatError, match=message):
        custom.load_custom(tmp_path / "d", test_classes=fraction)


def test_load_custom_feeds_the_sampler_and_split_csv_round_trips(tmp_path):
    root = folder(tmp_path / "d", classes=8, per_class=3)
    data = custom.load_custom(root, test_classes=0.5, seed=0)
    assert data.query is None and len(data.train) == 12 and len(data.gallery) == 12
    assert not set(data.train.paths) & set(data.gallery.paths)
    MPerClassSampler(data.train.labels, batch_size=8, samples_per_class=2)
    split = class_split.split_by_class(custom.read_images(root), test_classes=0.5, seed=0).images
    csv_path = custom.write_split_csv(split, tmp_path / "out" / "split.csv")
    again = custom.load_custom(csv_path)
    assert again.train.paths == data.train.paths and again.gallery.paths == data.gallery.paths


def test_fixed_steps_sampler_reads_the_base_stream():
    base = MPerClassSampler(np.repeat(np.arange(6), 4), batch_size=8, samples_per_class=2, seed=1)
    stream = np.concatenate([base.batches(e) for e in range(4)])
    fixed = FixedStepsSampler(base, 5)
    assert len(fixed) == 5 and fixed.batch_size == 8
    np.testing.assert_array_equal(np.concatenate([fixed.batches(0), fixed.batches(1)]), stream[:10])


# --- prepare -------------------------------------------------------------------------------


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prepare_writes_the_csv_and_a_report_of_everything(tmp_path, capsys):
    root = folder(tmp_path / "d", classes=8, per_class=3)
    png(root / "lone" / "0.png")
    (root / "class0" / "zero.jpg").write_bytes(b"")
    (root / "class0" / "readme.txt").write_text("x")
    (root / "class7" / "copy.png").write_bytes((root / "class0" / "0.png").read_bytes())  # a duplicate, other class
    code, out, err = run_cli(["prepare", str(root), "--out", str(tmp_path / "s" / "split.csv"), "--seed", "1"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "s" / "split.report.json").read_text())
    assert report["files"]["images_listed"] == 27 and report["files"]["images_used"] == 26
    assert report["unreadable"] == [{"path": str(root / "class0" / "zero.jpg"), "reason": "empty file (0 bytes)"}]
    assert report["skipped"][0]["path"] == str(root / "class0" / "readme.txt")
    assert (
        report["single_image_classes"]["count"] == 1
        and "gallery-only" in report["single_image_classes"]["what_happens"]
    )
    assert report["duplicates"]["groups"] == 1 and report["duplicates"]["with_different_labels"] == 1
    assert report["train"]["classes"] + report["test"]["classes"] == 9
    assert "Single-image classes: 1" in out and "Unreadable, not used" in out
    rows = (tmp_path / "s" / "split.csv").read_text().splitlines()
    assert rows[0] == "label,path,split,is_query,is_gallery" and len(rows) == 27


def test_prepare_warns_about_duplicates_across_the_split_and_dedupe_drops_them(tmp_path, capsys):
    root = folder(tmp_path / "d", classes=8, per_class=3)
    for c in range(1, 8):  # a copy of the same file in every class: some must fall on each side
        (root / f"class{c}" / "copy.png").write_bytes((root / "class0" / "0.png").read_bytes())
    code, out, _ = run_cli(["prepare", str(root), "--out", str(tmp_path / "a.csv")], capsys)
    assert code == 0 and "span train and test, a leak" in out
    assert json.loads((tmp_path / "a.report.json").read_text())["duplicates"]["across_split"] == 1
    code, out, _ = run_cli(["prepare", str(root), "--out", str(tmp_path / "b.csv"), "--dedupe"], capsys)
    report = json.loads((tmp_path / "b.report.json").read_text())
    assert code == 0 and len(report["duplicates"]["dropped"]) == 7 and report["duplicates"]["across_split"] == 0
    assert report["files"]["images_used"] == 24


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda root: root.mkdir(), [], "no images found"),
        (lambda root: folder(root, classes=1), [], "found 1 class"),
        (lambda root: folder(root, classes=4, per_class=1), [], "single image"),
        (lambda root: folder(root, classes=5, per_class=2), ["--test-classes", "0.2"], "each side needs at least 2"),
    ],
)
def test_prepare_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, make, extra, message):
    make(tmp_path / "d")
    code, out, err = run_cli(["prepare", str(tmp_path / "d"), "--out", str(tmp_path / "o" / "s.csv"), *extra], capsys)
    assert code == 2 and message in err and err.startswith("keras-roadmap: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
