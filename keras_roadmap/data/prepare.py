"""`prepare`: a user's images -> a checked, class-disjoint split CSV and a data report.

`prepare_images(data, ...)` reads a folder or CSV (`keras_roadmap.data.custom.read_images`),
decodes every image once (`inspect_images`: unreadable files and conversions), finds exact
duplicate files (SHA-256 of the bytes), optionally drops the copies (`dedupe`), splits a folder
by class (`keras_roadmap.data.class_split.split_by_class`; a CSV keeps its split), and returns
the split `ImageSet` with a JSON-ready report. Nothing is dropped silently: every file not in the
split is in the report with the reason. `format_report` is its text form;
`write_prepared(result, csv_path)` writes the CSV and `<stem>.report.json` next to it.
`keras-roadmap prepare` and `keras-roadmap train custom` both call these.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from keras_roadmap.data.class_split import split_by_class
from keras_roadmap.data.custom import TRAIN, VALIDATION, ImageSet, inspect_images, read_images, write_split_csv
from keras_roadmap.errors import DatasetFormatError

#: Upper bounds of the class-size histogram bins (images per class); the last bin is open.
HISTOGRAM_BINS = (1, 2, 4, 8, 16, 32, 64)
SHOWN = 20  # entries listed per report section (the counts are always complete)


@dataclasses.dataclass
class Prepared:
    """`images`: the split records (readable, deduplicated when asked); `report`: the data
    report (a JSON-ready dict, see `format_report`)."""

    images: ImageSet
    report: dict


def _histogram(counts: dict) -> dict:
    bins = {}
    low = 1
    for high in HISTOGRAM_BINS:
        key = str(high) if low == high else f"{low}-{high}"
        bins[key] = sum(1 for n in counts.values() if low <= n <= high)
        low = high + 1
    bins[f"{low}+"] = sum(1 for n in counts.values() if n >= low)
    return bins


def _side(records) -> dict:
    counts: dict = {}
    for r in records:
        counts[r.label] = counts.get(r.label, 0) + 1
    side = {
        "classes": len(counts),
        "images": len(records),
        "queries": sum(1 for r in records if r.is_query),
        "class_size_histogram": _histogram(counts),
    }
    categories = {r.category for r in records if r.category is not None}
    if categories:
        side["categories"] = len(categories)
    return side


def prepare_images(
    data,
    *,
    test_classes: float | None = None,
    seed: int | None = None,
    dedupe: bool = False,
    workers: int | None = None,
) -> Prepared:
    """Read, check, deduplicate (optionally) and split `data` (folder or CSV); see the module.

    Args:
        data: an image folder or an OML-style CSV.
        test_classes: fraction of the classes held out (folder only; default 0.5).
        seed: split seed (folder only; default 0).
        dedupe: drop every exact copy of a file but the first (in path order) before splitting.
        workers: decoding threads (default: 2 x CPUs, at most 8).

    Raises:
        DatasetFormatError: see `read_images` and `split_by_class`; also `test_classes` / `seed`
            given with a CSV (it already holds its split), and no readable image.
    """
    images = read_images(data)
    source = images.source
    if images.layout == "csv" and (test_classes is not None or seed is not None):
        raise DatasetFormatError(
            f"{source}: the CSV already holds its split (column `split`); --test-classes and --seed apply to a folder."
        )
    if not images.records:
        raise DatasetFormatError(
            f"{source}: no images found (expected ROOT/<class>/<image> with .jpg .jpeg .png .bmp .gif .webp files)."
        )
    checks = inspect_images(images.paths, workers=workers)
    unreadable = [{"path": c.path, "reason": c.reason} for c in checks if not c.ok]
    conversions: dict = {}
    for c in checks:
        for note in c.conversions:
            kind = note.split(":")[0].split(" (")[0] if ":" in note else note
            entry = conversions.setdefault(kind, {"count": 0, "examples": [], "what": note})
            entry["count"] += 1
            if len(entry["examples"]) < 3:
                entry["examples"].append(c.path)
    by_path = {c.path: c for c in checks}
    records = [r for r in images.records if by_path[r.path].ok]
    if not records:
        raise DatasetFormatError(
            f"{source}: none of the {len(images.records)} image files could be decoded "
            f"(first: {unreadable[0]['path']}: {unreadable[0]['reason']})."
        )

    groups: dict = {}
    for r in records:
        groups.setdefault(by_path[r.path].sha256, []).append(r)
    duplicate_groups = [g for g in groups.values() if len(g) > 1]
    dropped_duplicates = []
    if dedupe:
        drop = set()
        for group in duplicate_groups:
            keep = min(group, key=lambda r: r.path)
            for r in group:
                if r is not keep:
                    drop.add(r.path)
                    dropped_duplicates.append({"path": r.path, "duplicate_of": keep.path})
        records = [r for r in records if r.path not in drop]
    checked = ImageSet(source, images.layout, records, list(images.skipped))

    single: list = []
    if images.layout == "csv":
        split_set = checked
        single = sorted(label for label, n in _count(records).items() if n == 1)
    else:
        result = split_by_class(
            checked, test_classes=0.5 if test_classes is None else test_classes, seed=0 if seed is None else seed
        )
        split_set, single = result.images, result.single_image_classes

    side_of = {r.path: r.split for r in split_set.records}
    across = []
    for group in duplicate_groups:
        sides = {side_of[r.path] for r in group if r.path in side_of}
        if len(sides) > 1:
            across.append([r.path for r in group if r.path in side_of])
    train = [r for r in split_set.records if r.split == TRAIN]
    held = [r for r in split_set.records if r.split == VALIDATION]
    report = {
        "source": source,
        "layout": images.layout,
        "split": {
            "test_classes": None if images.layout == "csv" else (0.5 if test_classes is None else test_classes),
            "seed": None if images.layout == "csv" else (0 if seed is None else seed),
            "by": "class",
        },
        "files": {
            "images_listed": len(images.records),
            "images_used": len(split_set.records),
            "unreadable": len(unreadable),
            "skipped": len(images.skipped),
            "duplicates_dropped": len(dropped_duplicates),
        },
        "train": _side(train),
        "test": _side(held),
        "class_size_histogram": _histogram(_count(split_set.records)),
        "single_image_classes": {
            "count": len(single),
            "classes": single[:SHOWN],
            "what_happens": "held out as gallery-only distractors (is_query 0, is_gallery 1): "
            "they have no other image to be found with and no positive pair to train on",
        },
        "duplicates": {
            "groups": len(duplicate_groups),
            "files": sum(len(g) for g in duplicate_groups),
            "with_different_labels": sum(1 for g in duplicate_groups if len({r.label for r in g}) > 1),
            "examples": [[r.path for r in g] for g in duplicate_groups[:SHOWN]],
            "across_split": len(across),
            "across_split_examples": across[:SHOWN],
            "dropped": dropped_duplicates,
        },
        "unreadable": unreadable,
        "skipped": [{"path": p, "reason": why} for p, why in images.skipped],
        "conversions": conversions,
    }
    return Prepared(split_set, report)


def _count(records) -> dict:
    counts: dict = {}
    for r in records:
        counts[r.label] = counts.get(r.label, 0) + 1
    return counts


def format_report(report: dict) -> str:
    """The report as text (what `keras-roadmap prepare` prints)."""
    f, tr, te = report["files"], report["train"], report["test"]
    lines = [f"Data: {report['source']} ({report['layout']})"]
    lines.append(
        f"  images listed {f['images_listed']}, used {f['images_used']}, unreadable {f['unreadable']}, "
        f"skipped {f['skipped']}, duplicates dropped {f['duplicates_dropped']}"
    )
    split = report["split"]
    how = (
        "the CSV's own split"
        if split["test_classes"] is None
        else f"by class, --test-classes {split['test_classes']}, --seed {split['seed']}"
    )
    lines.append(f"Split ({how}):")
    lines.append(
        f"  train: {tr['classes']} classes, {tr['images']} images"
        + (f", {tr['categories']} categories" if "categories" in tr else "")
    )
    lines.append(
        f"  test:  {te['classes']} classes, {te['images']} images, {te['queries']} queries"
        + (f", {te['categories']} categories" if "categories" in te else "")
    )
    hist = "  ".join(f"{k}: {v}" for k, v in report["class_size_histogram"].items())
    lines.append(f"Images per class (classes): {hist}")
    single = report["single_image_classes"]
    if single["count"]:
        lines.append(f"Single-image classes: {single['count']}; {single['what_happens']}.")
    dup = report["duplicates"]
    if dup["groups"]:
        lines.append(
            f"Exact duplicate files: {dup['groups']} groups ({dup['files']} files"
            + (f", {dup['with_different_labels']} groups with different labels" if dup["with_different_labels"] else "")
            + ")."
        )
        for group in dup["examples"][:3]:
            lines.append("  same bytes: " + " = ".join(group))
    if dup["across_split"]:
        lines.append(
            f"WARNING: {dup['across_split']} duplicate group(s) span train and test, a leak; "
            "rerun with --dedupe to drop the copies."
        )
    if dup["dropped"]:
        lines.append(f"Dropped {len(dup['dropped'])} duplicate copies (--dedupe).")
    for item in report["unreadable"][:SHOWN]:
        lines.append(f"Unreadable, not used: {item['path']}: {item['reason']}")
    if len(report["unreadable"]) > SHOWN:
        lines.append(f"  ... {len(report['unreadable']) - SHOWN} more in the report file")
    skipped = report["skipped"]
    if skipped:
        lines.append(
            f"Skipped files: {len(skipped)} (hidden or not an image extension), e.g. "
            + "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:3])
        )
    for _kind, entry in report["conversions"].items():
        lines.append(f"Converted: {entry['count']} image(s) {entry['what']} (e.g. {entry['examples'][0]})")
    return "\n".join(lines)


def report_path(csv_path) -> pathlib.Path:
    """`split.csv` -> `split.report.json` (same folder)."""
    csv_path = pathlib.Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".report.json")


def write_prepared(prepared: Prepared, csv_path) -> tuple:
    """Write the split CSV and its report (each atomically); returns both paths."""
    from keras_roadmap import atomic

    csv_path = write_split_csv(prepared.images, csv_path)
    json_path = report_path(csv_path)
    report = dict(prepared.report, csv=str(csv_path))
    atomic.write_text(json_path, json.dumps(report, indent=2, ensure_ascii=False))
    return csv_path, json_path
