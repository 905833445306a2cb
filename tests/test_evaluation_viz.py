"""save_retrieval_grid and save_recall_curve: real PNGs, their size and the colours at known pixels."""

import numpy as np
import pytest
from PIL import Image

from keras_roadmap.evaluation import exact_knn, retrieval_metrics, save_recall_curve, save_retrieval_grid
from keras_roadmap.evaluation.visualization import (
    CORRECT_COLOUR,
    QUERY_COLOUR,
    WRONG_COLOUR,
    grid_cell_origin,
)

TILE, BORDER, GAP = 16, 3, 2


def _solid(values, size=20):
    return np.stack([np.full((size, size, 3), v, np.uint8) for v in values])


def _pixel(image, row, col, dx, dy):
    x, y = grid_cell_origin(row, col, TILE, BORDER, GAP)
    return image.getpixel((x + dx, y + dy))


def test_grid_size_borders_and_tiles(tmp_path):
    path = tmp_path / "grid.png"
    queries = _solid([10, 20, 30])
    gallery = _solid([100, 110, 120, 130, 140, 150])
    shown = save_retrieval_grid(
        path,
        queries,
        [1, 2, 3],
        gallery,
        [1, 9, 2, 2, 9, 9],
        neighbours=[[0, 1, 5], [3, 2, 0], [4, 5, 1]],
        k=2,
        tile_size=TILE,
        border=BORDER,
        gap=GAP,
        annotate=False,
    )
    np.testing.assert_array_equal(shown, [[0, 1], [3, 2], [4, 5]])
    image = Image.open(path)
    assert image.format == "PNG"
    step = TILE + 2 * BORDER + GAP
    assert image.size == (GAP + 3 * step, GAP + 3 * step)
    image = image.convert("RGB")
    expected = [
        [QUERY_COLOUR, CORRECT_COLOUR, WRONG_COLOUR],
        [QUERY_COLOUR, CORRECT_COLOUR, CORRECT_COLOUR],
        [QUERY_COLOUR, WRONG_COLOUR, WRONG_COLOUR],
    ]
    tiles = [[10, 100, 110], [20, 130, 120], [30, 140, 150]]
    for row in range(3):
        for col in range(3):
            # corners and the middle of an edge are border; the centre is the tile.
            for dx, dy in [(0, 0), (TILE + 2 * BORDER - 1, TILE + 2 * BORDER - 1), (BORDER // 2, TILE // 2)]:
                assert _pixel(image, row, col, dx, dy) == expected[row][col], (row, col, dx, dy)
            assert _pixel(image, row, col, BORDER + TILE // 2, BORDER + TILE // 2) == (tiles[row][col],) * 3
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_grid_from_embeddings_excludes_the_query_itself(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 4)).astype(np.float32)
    labels = np.repeat([1, 2], 5)
    images = [rng.integers(0, 255, size=(12 + i, 9, 3), dtype=np.uint8) for i in range(10)]  # varying sizes
    picked = np.array([0, 7])
    shown = save_retrieval_grid(
        tmp_path / "g.png",
        [images[i] for i in picked],
        labels[picked],
        images,
        labels,
        query_embeddings=emb[picked],
        gallery_embeddings=emb,
        exclude=picked,
        k=3,
        tile_size=TILE,
        border=BORDER,
        gap=GAP,
        annotate=False,
    )
    expected, _ = exact_knn(emb, k=3)
    np.testing.assert_array_equal(shown, expected[picked])
    image = Image.open(tmp_path / "g.png").convert("RGB")
    for row, q in enumerate(picked):
        for col, j in enumerate(shown[row], start=1):
            colour = CORRECT_COLOUR if labels[j] == labels[q] else WRONG_COLOUR
            assert _pixel(image, row, col, 0, 0) == colour


def test_annotated_grid_has_legend_and_captions(tmp_path):
    from keras_roadmap.evaluation.visualization import CAPTION_HEIGHT, HEADER_HEIGHT

    queries, gallery = _solid([10, 20]), _solid([100, 110, 120])
    tile, border, gap = 96, 4, 4
    common = dict(neighbours=[[0, 1], [2, 1]], k=2, tile_size=tile, border=border, gap=gap)
    save_retrieval_grid(tmp_path / "plain.png", queries, [1, 2], gallery, [1, 9, 2], annotate=False, **common)
    save_retrieval_grid(
        tmp_path / "a.png",
        queries,
        [1, 2],
        gallery,
        [1, 9, 2],
        scores=[[0.9, 0.5], [0.8, 0.1]],
        class_names={1: "cat", 2: "dog", 9: "Ж"},
        **common,
    )
    plain = Image.open(tmp_path / "plain.png").convert("RGB")
    annotated = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    assert annotated.shape[0] == plain.size[1] + HEADER_HEIGHT + 2 * CAPTION_HEIGHT
    # The legend holds the three border colours; every caption strip holds dark text pixels.
    legend = annotated[:HEADER_HEIGHT].reshape(-1, 3)
    for colour in (QUERY_COLOUR, CORRECT_COLOUR, WRONG_COLOUR):
        assert (legend == colour).all(axis=1).sum() > 50
    cell = tile + 2 * border
    for row in range(2):
        for col in range(3):
            x, y = grid_cell_origin(row, col, tile, border, gap, annotate=True)
            caption = annotated[y + cell : y + cell + CAPTION_HEIGHT, x : x + cell]
            assert (caption.min(axis=2) < 120).sum() > 20, (row, col)
            assert tuple(annotated[y + 1, x + 1]) == (
                QUERY_COLOUR if col == 0 else (CORRECT_COLOUR if (row, col) in ((0, 1), (1, 1)) else WRONG_COLOUR)
            )
    # The same layout with other captions differs only in the caption pixels.
    save_retrieval_grid(
        tmp_path / "b.png",
        queries,
        [1, 2],
        gallery,
        [1, 9, 2],
        scores=[[0.2, 0.5], [0.8, 0.1]],
        class_names={1: "cat", 2: "dog", 9: "Ж"},
        **common,
    )
    other = np.asarray(Image.open(tmp_path / "b.png").convert("RGB"))
    x, y = grid_cell_origin(0, 1, tile, border, gap, annotate=True)
    assert (other != annotated).any() and (other[y : y + cell] == annotated[y : y + cell]).all()


def test_grid_accepts_float_and_grayscale_images(tmp_path):
    queries = np.full((1, 8, 8), 0.5)  # float grayscale in [0, 1]
    gallery = np.full((2, 8, 8, 1), 200, np.uint8)
    save_retrieval_grid(
        tmp_path / "f.png",
        queries,
        [1],
        gallery,
        [1, 2],
        neighbours=[[1, 0]],
        k=2,
        tile_size=TILE,
        border=BORDER,
        gap=GAP,
        annotate=False,
    )
    image = Image.open(tmp_path / "f.png").convert("RGB")
    assert _pixel(image, 0, 0, BORDER + 5, BORDER + 5) == (128, 128, 128)
    assert _pixel(image, 0, 1, 0, 0) == WRONG_COLOUR
    assert _pixel(image, 0, 2, 0, 0) == CORRECT_COLOUR


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(query_images=np.zeros((1, 4, 4, 2), np.uint8)), "must be an"),
        (dict(query_images=np.full((1, 4, 4), 1.5)), r"in \[0, 1\]"),
        (dict(query_images=np.zeros((1, 4), np.uint8)), "must be"),
        (dict(neighbours=[[0, 5]]), "outside"),
        (dict(neighbours=[[0]]), "need"),
        (dict(neighbours=None), "Pass either"),
        (dict(query_labels=[1.0]), "integer dtype"),
    ],
)
def test_grid_bad_inputs(tmp_path, kwargs, message):
    args = dict(
        query_images=np.zeros((1, 4, 4, 3), np.uint8),
        query_labels=[1],
        gallery_images=np.zeros((3, 4, 4, 3), np.uint8),
        gallery_labels=[1, 2, 1],
        neighbours=[[0, 1]],
        k=2,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        save_retrieval_grid(tmp_path / "x.png", **args)


def _has_colour(image, hex_colour, tolerance=10):
    rgb = np.asarray(image.convert("RGB")).astype(int)
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(axis=-1) <= tolerance).sum())


def test_recall_curve_single_and_several_runs(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    metrics = retrieval_metrics(x, np.repeat(np.arange(12), 5), ks=(1, 2, 4, 8))
    save_recall_curve(tmp_path / "one.png", metrics)
    one = Image.open(tmp_path / "one.png")
    assert one.format == "PNG" and one.size == (600, 400)
    assert _has_colour(one, "#1f77b4") > 50  # the first line
    assert _has_colour(one, "#ff7f0e") == 0

    runs = {
        "baseline": metrics,
        "better": {k: min(1.0, v + 0.2) for k, v in metrics.items() if k.startswith("recall@")},
    }
    save_recall_curve(tmp_path / "two.png", runs, figsize=(4, 3), dpi=50)
    two = Image.open(tmp_path / "two.png")
    assert two.size == (200, 150)
    assert _has_colour(two, "#1f77b4") > 20 and _has_colour(two, "#ff7f0e") > 20


@pytest.mark.parametrize(
    "runs, message",
    [({}, "non-empty"), ({"map": 0.5}, "run 'map' must be a metrics dict"), ({"a": {"map": 0.3}}, "no 'recall@K'")],
)
def test_recall_curve_bad_inputs(tmp_path, runs, message):
    with pytest.raises(ValueError, match=message):
        save_recall_curve(tmp_path / "c.png", runs)
