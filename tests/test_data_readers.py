"""Dataset readers on tiny generated trees in each real on-disk layout."""

import pathlib

import numpy as np
import pytest

from keras_roadmap.data import (
    DatasetFormatError,
    RetrievalSplit,
    layouts,
    load_cub,
    load_inaturalist,
    load_inshop,
    load_sop,
)


def noise(seed: int, size=(24, 18)):
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def assert_contiguous(split: RetrievalSplit):
    assert split.labels.dtype == np.int64 and split.sample_ids.dtype == np.int64
    assert sorted(set(split.labels.tolist())) == list(range(split.num_classes))
    np.testing.assert_array_equal(split.sample_ids, np.arange(len(split)))
    assert all(pathlib.Path(p).is_file() for p in split.paths)


# ----------------------------------------------------------------------------------- SOP


def make_sop(root: pathlib.Path):
    """4 train classes (ids 1..4) and 3 test classes (ids 5..7) over 2 categories, 3 images each."""
    cats = ["bicycle_final", "chair_final"]
    rows = []
    for class_id in range(1, 8):
        split = "train" if class_id <= 4 else "test"
        cat_index = class_id % 2
        for k in range(3):
            rel = f"{cats[cat_index]}/{100000 + class_id}_{k}.JPG"
            rows.append((split, class_id, cat_index + 1, rel, noise(len(rows) + 1)))
    return layouts.write_sop(root, rows)


def test_sop_reads_both_splits(tmp_path):
    root = make_sop(tmp_path / "Stanford_Online_Products")
    train, test = load_sop(root, "train"), load_sop(root, "test")
    assert (len(train), len(test)) == (12, 9)
    assert (train.num_classes, test.num_classes) == (4, 3)
    assert_contiguous(train)
    assert_contiguous(test)
    assert train.class_names == ["1", "2", "3", "4"] and test.class_names == ["5", "6", "7"]
    assert not set(train.class_names) & set(test.class_names)
    # class_id 2 (label 1) lives in bicycle_final, class_id 1 (label 0) in chair_final.
    assert train.labels[3] == 1 and train.paths[3].endswith("bicycle_final/100002_0.JPG")
    assert train.super_class_names == ["bicycle_final", "chair_final"]
    np.testing.assert_array_equal(train.super_labels, [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0])


def test_sop_bad_header_names_file_and_line(tmp_path):
    root = make_sop(tmp_path)
    (root / "Ebay_train.txt").write_text("id class super path\n1 1 1 bicycle_final/100001_0.JPG\n")
    with pytest.raises(DatasetFormatError, match=r"Ebay_train.txt:1: expected the header"):
        load_sop(root, "train")


def test_sop_malformed_row_names_file_and_line(tmp_path):
    root = make_sop(tmp_path)
    lines = (root / "Ebay_train.txt").read_text().splitlines()
    lines[3] = "3 x 1 bicycle_final/100001_2.JPG"
    (root / "Ebay_train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"Ebay_train.txt:4: expected '<image_id:int>.*got '3 x 1"):
        load_sop(root, "train")


def test_sop_missing_list_file_explains_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Ebay_test.txt.*Expected layout"):
        load_sop(tmp_path, "test")


def test_sop_missing_image_reported_eagerly_or_deferred(tmp_path):
    root = make_sop(tmp_path)
    (root / "chair_final/100003_1.JPG").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 of 12 images .*Ebay_train.txt:9: .*100003_1.JPG"):
        load_sop(root, "train")
    deferred = load_sop(root, "train", check_files=False)
    assert len(deferred) == 12
    assert deferred.missing_files() == [str(root.resolve() / "chair_final/100003_1.JPG")]


def test_split_name_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\]"):
        load_sop(tmp_path, "val")


# ----------------------------------------------------------------------------------- CUB


def make_cub(root: pathlib.Path, per_class=2):
    """All 200 classes would be slow; classes 1, 2, 99, 100 (train) and 101, 150, 200 (test)."""
    rows = [
        (class_id, f"{class_id:03d}.Bird_{class_id}/Bird_{class_id}_{k}.jpg", noise(per_class * n + k + 1))
        for n, class_id in enumerate((1, 2, 99, 100, 101, 150, 200))
        for k in range(per_class)
    ]
    return layouts.write_cub(root, rows)


def test_cub_classes_split_at_100(tmp_path):
    root = make_cub(tmp_path)
    train, test = load_cub(root, "train"), load_cub(root / "CUB_200_2011", "test")
    assert (len(train), len(test)) == (8, 6)
    assert train.class_names == ["001.Bird_1", "002.Bird_2", "099.Bird_99", "100.Bird_100"]
    assert test.class_names == ["101.Bird_101", "150.Bird_150", "200.Bird_200"]
    assert_contiguous(train)
    assert_contiguous(test)
    assert train.super_labels is None
    np.testing.assert_array_equal(test.labels, [0, 0, 1, 1, 2, 2])


def test_cub_label_out_of_range_names_line(tmp_path):
    root = make_cub(tmp_path)
    path = root / "CUB_200_2011/image_class_labels.txt"
    lines = path.read_text().splitlines()
    lines[4] = "5 201"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetFormatError, match=r"image_class_labels.txt:5: expected '<image_id:int> <class_id in 1..200>'"
    ):
        load_cub(root)


def test_cub_image_without_label(tmp_path):
    root = make_cub(tmp_path)
    path = root / "CUB_200_2011/image_class_labels.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"no class for image_id 14 \(line 14 of .*images.txt\)"):
        load_cub(root)


def test_cub_duplicate_image_id(tmp_path):
    root = make_cub(tmp_path)
    path = root / "CUB_200_2011/images.txt"
    path.write_text(path.read_text() + "3 001.Bird_1/again.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"images.txt:15: expected a unique image_id"):
        load_cub(root)


# ---------------------------------------------------------------------------- iNaturalist


def make_inat(root: pathlib.Path):
    """Train: categories 10, 11 (Plantae), 20 (Aves); test: 12 (Plantae), 21, 22 (Aves); 3 images each."""
    rows = []
    for split, cats in (
        ("train", [(10, "Plantae"), (11, "Plantae"), (20, "Aves")]),
        ("test", [(12, "Plantae"), (21, "Aves"), (22, "Aves")]),
    ):
        for cat, kingdom in cats:
            for k in range(3):
                rows.append((split, f"train_val2018/{kingdom}/{cat}/{cat:04d}{k:028x}.jpg", noise(cat * 10 + k)))
    return layouts.write_inaturalist(root, rows)


def test_inaturalist_labels_and_kingdoms(tmp_path):
    root = make_inat(tmp_path)
    train, test = load_inaturalist(root, "train"), load_inaturalist(root, "test")
    assert (len(train), len(test)) == (9, 9)
    assert train.class_names == ["10", "11", "20"] and test.class_names == ["12", "21", "22"]
    assert_contiguous(train)
    assert_contiguous(test)
    assert train.super_class_names == ["Aves", "Plantae"]
    np.testing.assert_array_equal(train.super_labels, [1] * 6 + [0] * 3)
    assert train.paths[0].startswith(str(root.resolve() / "train_val2018/Plantae/10/"))


def test_inaturalist_overlapping_classes_rejected(tmp_path):
    root = make_inat(tmp_path)
    test_file = root / "Inat_dataset_splits/Inaturalist_test_set1.txt"
    test_file.write_text(test_file.read_text() + "train_val2018/Plantae/10/extra.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"Inaturalist_test_set1.txt:10: category 10 also appears .*line 1"):
        load_inaturalist(root, "train", check_files=False)


def test_inaturalist_malformed_path(tmp_path):
    root = make_inat(tmp_path)
    train_file = root / "Inat_dataset_splits/Inaturalist_train_set1.txt"
    lines = train_file.read_text().splitlines()
    lines[1] = "train_val2018/Plantae/notanumber/x.jpg"
    train_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"Inaturalist_train_set1.txt:2: expected one relative path"):
        load_inaturalist(root, "test")


def test_inaturalist_missing_image(tmp_path):
    root = make_inat(tmp_path)
    (root / "train_val2018/Aves/21").joinpath(
        sorted(p.name for p in (root / "train_val2018/Aves/21").iterdir())[0]
    ).unlink()
    with pytest.raises(FileNotFoundError, match=r"Inaturalist_test_set1.txt:4: .*train_val2018/Aves/21/"):
        load_inaturalist(root, "test")


# -------------------------------------------------------------------------------- In-Shop


def make_inshop(root: pathlib.Path, count_override=None):
    rows = []
    items = {"train": ["id_00000001", "id_00000002"], "test": ["id_00000003", "id_00000004", "id_00000005"]}
    for item in items["train"]:
        for k in range(3):
            rows.append((f"img/WOMEN/Dresses/{item}/0{k}_1_front.jpg", item, "train"))
    for n, item in enumerate(items["test"]):
        category = "MEN/Denim" if n == 0 else "WOMEN/Blouses_Shirts"
        rows.append((f"img/{category}/{item}/01_1_front.jpg", item, "query"))
        rows.append((f"img/{category}/{item}/01_2_side.jpg", item, "gallery"))
        rows.append((f"img/{category}/{item}/01_3_back.jpg", item, "gallery"))
    # One gallery-only item: it must still share the query/gallery label space.
    rows.append(("img/WOMEN/Dresses/id_00000006/01_1_front.jpg", "id_00000006", "gallery"))
    return layouts.write_inshop(root, [(*row, noise(i)) for i, row in enumerate(rows)], count=count_override)


def test_inshop_query_and_gallery_share_labels(tmp_path):
    root = make_inshop(tmp_path)
    train, query, gallery = (load_inshop(root, s) for s in ("train", "query", "gallery"))
    assert (len(train), len(query), len(gallery)) == (6, 3, 7)
    assert_contiguous(train)
    assert_contiguous(gallery)
    assert query.class_names == gallery.class_names == ["id_00000003", "id_00000004", "id_00000005", "id_00000006"]
    np.testing.assert_array_equal(query.labels, [0, 1, 2])
    np.testing.assert_array_equal(gallery.labels, [0, 0, 1, 1, 2, 2, 3])
    assert train.class_names == ["id_00000001", "id_00000002"]
    assert query.super_class_names == ["MEN/Denim", "WOMEN/Blouses_Shirts"]


def test_inshop_eval_subfolder_layout(tmp_path):
    root = make_inshop(tmp_path / "inshop")
    (root / "Eval").mkdir()
    (root / "list_eval_partition.txt").rename(root / "Eval/list_eval_partition.txt")
    (root / "Img").mkdir()
    (root / "img").rename(root / "Img/img")
    query = load_inshop(root, "query")
    assert query.paths[0] == str(root.resolve() / "Img/img/MEN/Denim/id_00000003/01_1_front.jpg")


def test_inshop_count_mismatch(tmp_path):
    root = make_inshop(tmp_path, count_override=99)
    with pytest.raises(DatasetFormatError, match=r"list_eval_partition.txt:1: line 1 announces 99 images but 16"):
        load_inshop(root, "train")


def test_inshop_bad_status(tmp_path):
    root = make_inshop(tmp_path)
    path = root / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("train", "val")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"list_eval_partition.txt:5: expected .*train\|query\|gallery"):
        load_inshop(root, "train")


def test_inshop_bad_header(tmp_path):
    root = make_inshop(tmp_path)
    path = root / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    lines[1] = "image item status"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"list_eval_partition.txt:2: expected the header"):
        load_inshop(root, "query")


def test_split_validates_its_fields():
    with pytest.raises(ValueError, match=r"`labels` must be an int64 numpy array of shape \(2,\)"):
        RetrievalSplit("x", ["a", "b"], np.array([0, 1], np.int32), None, np.arange(2), ["a", "b"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        RetrievalSplit("x", ["a", "b"], np.array([0, 1]), None, np.arange(2), ["a"])


def test_pipeline_modules_load_only_on_first_use():
    import subprocess
    import sys

    # The readers are numpy-only: `keras_roadmap.data` defers its TensorFlow modules (pipeline,
    # transforms) to first attribute access.
    code = (
        "import sys; from keras_roadmap.data import load_sop, RetrievalSplit; "
        "assert 'keras_roadmap.data.pipeline' not in sys.modules; "
        "assert 'keras_roadmap.data.transforms' not in sys.modules; "
        "from keras_roadmap.data import make_train_dataset; "
        "assert 'keras_roadmap.data.pipeline' in sys.modules"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_split_repr_is_compact(tmp_path):
    split = load_sop(make_sop(tmp_path), "train")
    assert repr(split) == "RetrievalSplit('sop/train', images=12, classes=4, super_classes=2)"
