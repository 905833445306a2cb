"""Glyph dataset: font selection, duplicates, rendering, determinism, class split, cache, errors."""

import os
import shutil

import numpy as np
import pytest

from keras_roadmap.data import glyphs

# Text fonts (6), Computer Modern fonts (a text one and two symbol ones) and a symbol stub.
TEXT_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "STIXGeneral.ttf",
    "cmr10.ttf",
)
NON_TEXT_FONTS = ("cmex10.ttf", "cmsy10.ttf", "STIXSizOneSymReg.ttf", "DejaVuSansDisplay.ttf")
# Latin A / Greek Alpha / Cyrillic A are drawn identically; so are o / omicron.
CHARS = "ABCDEFGHabcdefgo0123" + "\u0391\u0392\u0393\u0394\u03bf" + "\u0410\u0411\u0414\u0416" + "\u00c0\u00e9"


@pytest.fixture(scope="module")
def fonts_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fonts")
    source = glyphs.default_fonts_dir()
    for name in TEXT_FONTS + NON_TEXT_FONTS:
        shutil.copy(os.path.join(source, name), folder / name)
    (folder / "README.txt").write_text("not a font")
    return folder


@pytest.fixture(scope="module")
def dataset(fonts_dir):
    return glyphs.build_glyph_dataset(fonts_dir, cache_dir=False, characters=CHARS, min_fonts=5, copies=2, seed=3)


def test_text_fonts_skip_symbol_fonts_and_tex_encodings(fonts_dir):
    fonts = {os.path.basename(p): chars for p, chars in glyphs.text_fonts(fonts_dir).items()}
    assert sorted(fonts) == sorted(TEXT_FONTS)
    # cmr10's cmap maps U+00C0 to its "AE" glyph (TeX encoding): not a real A-grave.
    assert "A" in fonts["cmr10.ttf"] and "\u00c0" not in fonts["cmr10.ttf"]
    assert "\u00c0" in fonts["DejaVuSans.ttf"] and "\u0416" in fonts["DejaVuSans.ttf"]


def test_near_duplicates_are_dropped_and_documented(dataset):
    assert dataset.dropped_duplicates["\u0391"] == "A"  # Greek Alpha
    assert dataset.dropped_duplicates["\u0410"] == "A"  # Cyrillic A
    assert dataset.dropped_duplicates["\u03bf"] == "o"  # Greek omicron
    kept = set(dataset.characters)
    assert {"A", "o", "\u0393", "\u0416", "\u00c0", "\u00e9"} <= kept
    assert not kept & set(dataset.dropped_duplicates)
    # Only characters drawn by >= min_fonts fonts: cmr10 lacks Greek/Cyrillic/accents, still 5 left.
    assert len(kept) + len(dataset.dropped_duplicates) == len(CHARS)


def test_threshold_zero_keeps_only_exact_copies_out(fonts_dir):
    everything = glyphs.build_glyph_dataset(
        fonts_dir, cache_dir=False, characters=CHARS, min_fonts=5, copies=1, duplicate_threshold=0.0
    )
    # Identical outlines render to identical pixels, so nothing is strictly below distance 0.
    assert len(everything.characters) == len(CHARS) and everything.dropped_duplicates == {}


def test_images_shapes_ink_and_centring(dataset):
    n = len(dataset.labels)
    assert dataset.images.shape == (n, 32, 32, 1) and dataset.images.dtype == np.uint8
    assert dataset.labels.dtype == np.int64 and dataset.font_ids.shape == (n,)
    ink = dataset.images[..., 0].astype(np.float64)
    assert (ink.max(axis=(1, 2)) > 128).all()  # every image shows a glyph
    assert (ink[:, :, 0].max(axis=1) < 255).mean() > 0.9  # and it is not clipped at the border
    rows = (ink.sum(axis=2) * np.arange(32)).sum(axis=1) / ink.sum(axis=(1, 2))
    cols = (ink.sum(axis=1) * np.arange(32)).sum(axis=1) / ink.sum(axis=(1, 2))
    # Centred ink box, shifted by at most 8% of the side (2.6 px) plus rotation/shape effects.
    assert np.abs(rows - 15.5).max() < 7 and np.abs(cols - 15.5).max() < 7
    assert abs(rows.mean() - 15.5) < 1.5 and abs(cols.mean() - 15.5) < 1.5
    # Every (class, font) pair has `copies` images, and the copies differ (augmentation).
    pairs, counts = np.unique(np.stack([dataset.labels, dataset.font_ids]), axis=1, return_counts=True)
    assert (counts == 2).all()
    first = np.flatnonzero((dataset.labels == pairs[0, 0]) & (dataset.font_ids == pairs[1, 0]))
    assert not np.array_equal(dataset.images[first[0]], dataset.images[first[1]])


def test_each_class_has_at_least_min_fonts(dataset):
    for label in range(len(dataset.characters)):
        assert len(np.unique(dataset.font_ids[dataset.labels == label])) >= 5


def test_build_is_deterministic_and_seeded(fonts_dir, dataset):
    again = glyphs.build_glyph_dataset(fonts_dir, cache_dir=False, characters=CHARS, min_fonts=5, copies=2, seed=3)
    np.testing.assert_array_equal(again.images, dataset.images)
    np.testing.assert_array_equal(again.labels, dataset.labels)
    np.testing.assert_array_equal(again.test_classes, dataset.test_classes)
    other = glyphs.build_glyph_dataset(fonts_dir, cache_dir=False, characters=CHARS, min_fonts=5, copies=2, seed=4)
    assert other.characters == dataset.characters
    assert not np.array_equal(other.images, dataset.images)


def test_train_and_test_classes_are_disjoint_halves(dataset):
    train, test = set(dataset.train_classes.tolist()), set(dataset.test_classes.tolist())
    assert not train & test
    assert train | test == set(range(len(dataset.characters)))
    assert abs(len(train) - len(test)) <= 1
    train_x, train_y = dataset.split("train")
    test_x, test_y = dataset.split("test")
    assert set(train_y.tolist()) == train and set(test_y.tolist()) == test
    assert len(train_x) + len(test_x) == len(dataset.labels)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        dataset.split("val")


def test_cache_is_written_reused_and_keyed_by_parameters(fonts_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = glyphs.build_glyph_dataset(fonts_dir, cache, characters=CHARS, min_fonts=5, copies=1)
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].endswith(".npz")

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although the cache holds this dataset")

    monkeypatch.setattr(glyphs, "_render_dataset", no_render)
    cached = glyphs.build_glyph_dataset(fonts_dir, cache, characters=CHARS, min_fonts=5, copies=1)
    np.testing.assert_array_equal(cached.images, first.images)
    np.testing.assert_array_equal(cached.train_classes, first.train_classes)
    assert cached.characters == first.characters and cached.fonts == first.fonts
    assert cached.dropped_duplicates == first.dropped_duplicates
    monkeypatch.undo()
    glyphs.build_glyph_dataset(fonts_dir, cache, characters=CHARS, min_fonts=5, copies=1, image_size=16)
    assert len(os.listdir(cache)) == 2  # another parameter set, another file


def test_image_size_parameter(fonts_dir):
    small = glyphs.build_glyph_dataset(
        fonts_dir, cache_dir=False, characters="ABCDEFGH", min_fonts=5, copies=1, image_size=16
    )
    assert small.images.shape[1:] == (16, 16, 1)


def test_default_font_folder_has_the_matplotlib_text_fonts():
    fonts = glyphs.text_fonts()
    names = {os.path.basename(p) for p in fonts}
    assert len(fonts) >= 20 and "DejaVuSans.ttf" in names and "cmex10.ttf" not in names
    assert "LastResortHE-Regular.ttf" not in names  # one placeholder glyph per block


def test_missing_fonts_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="Fonts directory not found"):
        glyphs.build_glyph_dataset(tmp_path / "nope", cache_dir=False)


def test_empty_fonts_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="No .ttf or .otf"):
        glyphs.build_glyph_dataset(tmp_path, cache_dir=False)


def test_too_few_text_fonts(fonts_dir):
    with pytest.raises(ValueError, match=r"6 text font\(s\).*min_fonts=8.*cmex10"):
        glyphs.build_glyph_dataset(fonts_dir, cache_dir=False, characters=CHARS)


def test_too_few_classes(fonts_dir):
    with pytest.raises(ValueError, match="need 4"):
        glyphs.build_glyph_dataset(fonts_dir, cache_dir=False, characters="AB", min_fonts=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"characters": "AB!"}, "outside the letters/digits"),
        ({"image_size": 4}, "image_size"),
        ({"copies": 0}, "copies"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"reference_font": "Arial.ttf"}, "reference_font"),
    ],
)
def test_bad_parameters(fonts_dir, kwargs, message):
    options = {"characters": CHARS, "min_fonts": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        glyphs.build_glyph_dataset(fonts_dir, cache_dir=False, **options)


def test_script_of_maps_characters_to_their_unicode_script():
    cases = {
        "A": "Latin",
        "z": "Latin",
        "\u00e9": "Latin",  # e acute (Latin-1 Supplement)
        "\u0101": "Latin",  # a macron (Latin Extended-A)
        "\u00aa": "Latin",  # feminine ordinal: Latin in Scripts.txt, though its name says nothing
        "\u03b2": "Greek",
        "\u03a9": "Greek",
        "\u0436": "Cyrillic",
        "\u0416": "Cyrillic",
        "\u03e2": "Coptic",  # in the Greek and Coptic block, Coptic script
        "7": "Common",
        "\u00b5": "Common",  # micro sign
    }
    assert {c: glyphs.script_of(c) for c in cases} == cases
    with pytest.raises(ValueError, match="one character"):
        glyphs.script_of("ab")


def test_hierarchical_labels_are_script_then_class(dataset):
    test_x, test_y = dataset.split("test")
    labels = dataset.hierarchical_labels(test_y)
    assert labels.shape == (len(test_y), 2) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels[:, 1], test_y)
    for coarse, fine in np.unique(labels, axis=0):
        assert glyphs.SCRIPTS[coarse] == glyphs.script_of(dataset.characters[fine])
    # A tree: each class has one script.
    pairs = np.unique(dataset.hierarchical_labels(dataset.labels), axis=0)
    assert len(pairs) == len(dataset.characters)
    # CHARS holds every script but Coptic.
    assert set(pairs[:, 0]) == {0, 1, 2, 4}
    with pytest.raises(ValueError, match="lie in"):
        dataset.hierarchical_labels([len(dataset.characters)])
    with pytest.raises(ValueError, match="1-D integer"):
        glyphs.hierarchical_glyph_labels("AB", [[0, 1]])
