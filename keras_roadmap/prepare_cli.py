"""``keras-roadmap prepare DATA --out split.csv``: a class-disjoint split CSV and a data report
(:mod:`keras_roadmap.data.prepare`). Standard library at import; no TensorFlow at all."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    """Register ``prepare`` on the CLI's subparsers."""
    pre = sub.add_parser(
        "prepare",
        help="split a folder of images (or check a CSV) by class and report on the data",
        description="Read DATA (ROOT/<class>/<image>, ROOT/<category>/<class>/<image> or an OML-style CSV), "
        "decode every image once, split the classes so that none is on both sides (stratified by "
        "category), and write the split CSV (label, path, split, is_query, is_gallery[, category]) "
        "plus OUT's .report.json: classes and images per side, class sizes, single-image classes, "
        "duplicate files, unreadable files with the reason.",
    )
    pre.add_argument("data", metavar="DATA", help="image folder or CSV")
    pre.add_argument("--out", required=True, help="split CSV to write (the report goes next to it: NAME.report.json)")
    pre.add_argument(
        "--test-classes",
        type=float,
        default=None,
        help="fraction of the classes held out for testing (default 0.5; folders only)",
    )
    pre.add_argument("--seed", type=int, default=None, help="split seed (default 0; folders only)")
    pre.add_argument("--dedupe", action="store_true", help="drop exact duplicate files (same bytes) but the first")
    pre.add_argument("--workers", type=int, default=None, help="decoding threads (default 2 x CPUs, at most 8)")
    pre.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from keras_roadmap.cli import CLIError, check_output_path
    from keras_roadmap.data.prepare import format_report, prepare_images, write_prepared
    from keras_roadmap.errors import DatasetFormatError

    if not args.out.lower().endswith(".csv"):
        raise CLIError(f"--out {args.out}: the split is written as a CSV; give a name ending in .csv")
    check_output_path(args.out)
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    try:
        prepared = prepare_images(
            args.data, test_classes=args.test_classes, seed=args.seed, dedupe=args.dedupe, workers=args.workers
        )
    except (DatasetFormatError, ImportError) as err:
        raise CLIError(" ".join(str(err).split())) from err
    csv_path, json_path = write_prepared(prepared, args.out)
    print(format_report(prepared.report))
    print(f"Wrote {csv_path} and {json_path}.")
    return 0
