"""A real colour image folder of ~1,900 classes for the own-images benchmarks: each class is one
emoji, its images are that emoji as drawn by different vendors (Google, Twitter, Facebook: 64 px
RGBA PNG artwork from the ``emoji-datasource-*`` packages of the npm registry).

    mkdir NPM && (cd NPM && npm pack emoji-datasource@16.0.0 emoji-datasource-google@16.0.0 \\
        emoji-datasource-twitter@16.0.0 emoji-datasource-facebook@16.0.0)
    python benchmarks/emoji_folder.py --npm-dir NPM --out runs/emoji/images

Writes ``OUT/<category>/<emoji>/<vendor>.png`` (the two-level layout of ``keras-roadmap
prepare``: the emoji category, e.g. "Animals & Nature", is each class's category), for every
emoji without skin-tone modifier that all the chosen vendors draw, and ``OUT.json`` with the
counts and the package versions. Retrieval across vendors is a real task: the same emoji looks
different from one vendor to the next, and emoji of one subcategory look alike. The images are
the vendors' artwork under their licences; they are read from the packages, never committed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import tarfile

VENDORS = ("google", "twitter", "facebook")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npm-dir", required=True, help="folder with the `npm pack` tarballs")
    parser.add_argument("--out", required=True, help="image folder to write")
    parser.add_argument("--vendors", nargs="+", default=list(VENDORS), choices=VENDORS)
    return parser.parse_args(argv)


def _tarball(npm_dir: pathlib.Path, package: str) -> pathlib.Path:
    found = sorted(npm_dir.glob(f"{package}-[0-9]*.tgz"))
    if not found:
        raise SystemExit(f"{npm_dir}: no {package}-VERSION.tgz; run `npm pack {package}` there (see --help).")
    return found[-1]


def _folder_name(text: str) -> str:
    return re.sub(r"[^\w&.-]+", "_", text).strip("_")


def build(npm_dir, out, vendors=VENDORS) -> dict:
    """Write the folder; returns the summary written to ``OUT.json``."""
    npm_dir, out = pathlib.Path(npm_dir), pathlib.Path(out)
    with tarfile.open(_tarball(npm_dir, "emoji-datasource")) as tar:
        emoji = json.load(tar.extractfile("package/emoji.json"))
    chosen = [e for e in emoji if all(e.get(f"has_img_{v}") for v in vendors) and e["category"] != "Component"]
    images = 0
    for vendor in vendors:
        path = _tarball(npm_dir, f"emoji-datasource-{vendor}")
        with tarfile.open(path) as tar:
            for entry in chosen:
                member = tar.extractfile(f"package/img/{vendor}/64/{entry['image']}")
                folder = out / _folder_name(entry["category"]) / _folder_name(entry["short_name"])
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{vendor}.png").write_bytes(member.read())
                images += 1
    summary = {
        "classes": len(chosen),
        "images": images,
        "categories": sorted({_folder_name(e["category"]) for e in chosen}),
        "vendors": list(vendors),
        "packages": sorted(p.name for p in npm_dir.glob("emoji-datasource*.tgz")),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = build(args.npm_dir, args.out, args.vendors)
    count = len(summary["categories"])
    print(f"{summary['images']} images of {summary['classes']} classes in {count} categories -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
