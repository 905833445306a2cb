"""Glyphs: a small unseen-class retrieval dataset rendered from the fonts on disk.

Each class is one character (letters and digits of the Basic Latin, Latin-1 Supplement, Latin
Extended-A, Greek and Cyrillic blocks); each image is that character rendered in one font, with
small random rotation, scaling and shift. Half of the characters (seeded) are training classes,
the other half the unseen test classes, so it is a zero-shot retrieval benchmark like SOP or
CUB, but one that builds offline in seconds from matplotlib's bundled fonts and trains on a CPU.

Which fonts count (``text_fonts``): a font is a text font when at least 48 of the 52 ASCII
letters pass the coverage test below; symbol fonts (STIXSize*, STIXNonUni*, cmex10, cmsy10),
the LastResort fallback font (one placeholder glyph per block) and the DejaVu "Display" stubs
fail it. A character is *in* a font when the font's cmap maps it to a glyph whose PostScript
name decodes (Adobe Glyph List rules: ``A``, ``Agrave``, ``uni0416``) to that very character;
fonts without glyph names (post table format 3) are trusted on their cmap alone. The name check
matters: matplotlib's Computer Modern fonts carry TeX encodings behind a Unicode-looking cmap
(cmr10 maps U+00C0 to ``AE``...), so a cmap lookup alone would render wrong glyphs.

Near-duplicates: characters drawn identically in a reference font (Latin A, Greek Alpha,
Cyrillic A; Latin o, Greek omicron, Cyrillic o; ...) would be different classes with the same
pictures. Characters are visited in code-point order and one is dropped when its clean render
in the reference font lies within ``DUPLICATE_THRESHOLD`` (mean absolute pixel difference, pixels
in [0, 1]) of a character already kept.

Rendering (Pillow + FreeType, 4x supersampled, white glyph on black): the glyph's ink box is
centred; the font size puts the em square at 70% of the image side, and a glyph whose box would
exceed 90% of the side is shrunk to fit. Each (character, font) gets ``copies`` images, each
with a rotation uniform in [-10, 10] degrees, a scale in [0.9, 1.1] and a shift of up to 8% of
the side per axis, from a generator seeded by ``(seed, character, font)``.

Hierarchy (:func:`script_of`, :meth:`GlyphDataset.hierarchical_labels`): the coarse level of a
character is its Unicode *script* (:data:`SCRIPTS`: Latin, Greek, Cyrillic, Coptic, Common),
read from its Unicode name (``LATIN ...``, ``GREEK ...``, ...); the two ordinal indicators
(``ª`` ``º``) are Latin and the digits and the micro sign (``µ``) Common, as in Unicode's
``Scripts.txt``. The blocks are not used as the coarse level: Basic Latin, Latin-1 and Latin
Extended-A split one script by code-point history (``e`` / ``é`` / ``ē`` in three blocks).

The arrays are cached as one ``.npz`` per parameter set (the key covers every parameter, the
font files' names and sizes, and a format version), so later calls load in milliseconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import unicodedata

import numpy as np

# Unicode blocks the characters come from: (first, last) code points, inclusive.
BLOCKS = {
    "Basic Latin": (0x0000, 0x007F),
    "Latin-1 Supplement": (0x0080, 0x00FF),
    "Latin Extended-A": (0x0100, 0x017F),
    "Greek and Coptic": (0x0370, 0x03FF),
    "Cyrillic": (0x0400, 0x04FF),
}
# Coarse level of the glyph hierarchy: Unicode scripts, in id order (see the module docstring).
SCRIPTS = ("Latin", "Greek", "Cyrillic", "Coptic", "Common")
# Characters of the blocks whose script their Unicode name does not start with (Scripts.txt).
_SCRIPT_EXCEPTIONS = {"\u00aa": "Latin", "\u00ba": "Latin"}
# Mean absolute pixel difference (pixels in [0, 1]) under which two characters' clean 32 px
# renders in the reference font are the same picture. Measured in DejaVu Sans Bold: identical
# outlines (A / Alpha / Cyrillic A, ...) give 0, homoglyphs with shifted diacritics 0.0006-0.0024
# (Latin e-diaeresis / Cyrillic yo is the largest); the closest pair of different characters
# is E-breve / E-caron at 0.0029, then i / l at 0.0058. Accents are small, so distances between
# different accented letters are small too: the threshold sits in that narrow gap.
DUPLICATE_THRESHOLD = 0.0025
# ASCII letters a font must cover (out of 52) to count as a text font.
MIN_TEXT_LETTERS = 48
FONT_SUFFIXES = (".ttf", ".otf")
_CACHE_VERSION = 1
_SUPERSAMPLE = 4
_EM_FRACTION = 0.7
_MAX_INK_FRACTION = 0.9
_MAX_ROTATION_DEG = 10.0
_SCALE_RANGE = (0.9, 1.1)
_MAX_SHIFT_FRACTION = 0.08


def _lazy_imports():
    try:
        from fontTools import agl
        from fontTools.ttLib import TTFont
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The glyph dataset renders fonts with Pillow and reads their character maps with "
            "fontTools (a matplotlib dependency): pip install keras-roadmap[viz]"
        ) from error
    return agl, TTFont, Image, ImageDraw, ImageFont


def default_fonts_dir() -> str:
    """matplotlib's bundled TrueType fonts (``mpl-data/fonts/ttf``)."""
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The default fonts directory is matplotlib's: pip install keras-roadmap[viz], or pass "
            "fonts_dir= a folder of .ttf/.otf files."
        ) from error
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def default_cache_dir() -> str:
    """``$KERAS_ROADMAP_CACHE/glyphs``, else ``~/.cache/keras_roadmap/glyphs``."""
    root = os.environ.get("KERAS_ROADMAP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "keras_roadmap")
    return os.path.join(root, "glyphs")


def candidate_characters() -> list[str]:
    """Letters and decimal digits of :data:`BLOCKS`, in code-point order."""
    chars = []
    for first, last in BLOCKS.values():
        for code in range(first, last + 1):
            char = chr(code)
            category = unicodedata.category(char)
            if category.startswith("L") or category == "Nd":
                chars.append(char)
    return chars


@dataclasses.dataclass(frozen=True)
class GlyphDataset:
    """Rendered glyphs with their class split.

    Attributes:
        images: ``(N, S, S, 1)`` uint8, white glyph (255) on black (0).
        labels: ``(N,)`` int64 class ids in ``[0, len(characters))``.
        font_ids: ``(N,)`` int64 index into ``fonts`` of each image.
        characters: the class of each id (one character each), code-point order.
        fonts: file names of the text fonts used, sorted.
        train_classes, test_classes: ``(C_train,)`` / ``(C_test,)`` int64 disjoint class ids
            (the seeded half split; the test classes are never seen in training).
        dropped_duplicates: ``{dropped character: kept character it duplicates}``.
        reference_font: font used to detect duplicates.
    """

    images: np.ndarray
    labels: np.ndarray
    font_ids: np.ndarray
    characters: tuple
    fonts: tuple
    train_classes: np.ndarray
    test_classes: np.ndarray
    dropped_duplicates: dict
    reference_font: str

    def split(self, name: str):
        """``(images, labels)`` of the ``"train"`` or ``"test"`` classes (labels unchanged)."""
        if name not in ("train", "test"):
            raise ValueError(f"split name must be 'train' or 'test'; got {name!r}.")
        classes = self.train_classes if name == "train" else self.test_classes
        mask = np.isin(self.labels, classes)
        return self.images[mask], self.labels[mask]

    def hierarchical_labels(self, labels) -> np.ndarray:
        """``(N, 2)`` int64 ``[script id, class id]`` (coarse to fine, the layout of ``HAPLoss``
        and ``hierarchical_retrieval_metrics``) of class ids ``labels`` (e.g. a split's).

        The script id indexes :data:`SCRIPTS` (Latin 0, Greek 1, Cyrillic 2, Coptic 3, Common 4).
        """
        return hierarchical_glyph_labels(self.characters, labels)

    def __repr__(self):
        return (
            f"GlyphDataset({len(self.labels)} images {self.images.shape[1:]}, {len(self.characters)} classes "
            f"({len(self.train_classes)} train / {len(self.test_classes)} test), {len(self.fonts)} fonts)"
        )


def script_of(char: str) -> str:
    """The Unicode script of one character of the glyph blocks, one of :data:`SCRIPTS`.

    >>> script_of("A"), script_of("\u03b2"), script_of("\u0436"), script_of("7"), script_of("\u00aa")
    ('Latin', 'Greek', 'Cyrillic', 'Common', 'Latin')
    """
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"script_of takes one character; got {char!r}.")
    if char in _SCRIPT_EXCEPTIONS:
        return _SCRIPT_EXCEPTIONS[char]
    first_word = unicodedata.name(char, "").split(" ")[0]
    return {"LATIN": "Latin", "GREEK": "Greek", "CYRILLIC": "Cyrillic", "COPTIC": "Coptic"}.get(first_word, "Common")


def hierarchical_glyph_labels(characters, labels) -> np.ndarray:
    """``(N, 2)`` int64 ``[script id, class id]`` for class ids ``labels`` into ``characters``
    (the class of each id, e.g. ``GlyphDataset.characters``); script ids index :data:`SCRIPTS`.

    >>> hierarchical_glyph_labels("A\u03b2\u04363", [0, 2, 3, 1]).tolist()
    [[0, 0], [2, 2], [4, 3], [1, 1]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array of class ids; got shape {labels.shape}, {labels.dtype}.")
    characters = tuple(characters)
    if labels.size and (labels.min() < 0 or labels.max() >= len(characters)):
        raise ValueError(f"class ids must lie in [0, {len(characters)}); got {labels.min()}..{labels.max()}.")
    scripts = np.asarray([SCRIPTS.index(script_of(c)) for c in characters], np.int64)
    return np.stack([scripts[labels], labels.astype(np.int64)], axis=1)


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _font_files(fonts_dir) -> list[str]:
    if fonts_dir is None:
        fonts_dir = default_fonts_dir()
    fonts_dir = os.path.expanduser(os.fspath(fonts_dir))
    if not os.path.isdir(fonts_dir):
        raise FileNotFoundError(
            f"Fonts directory not found: {fonts_dir!r}. Pass fonts_dir= a folder of .ttf/.otf files "
            "(None uses matplotlib's bundled fonts)."
        )
    files = sorted(
        os.path.join(fonts_dir, name) for name in os.listdir(fonts_dir) if name.lower().endswith(FONT_SUFFIXES)
    )
    if not files:
        raise FileNotFoundError(f"No .ttf or .otf font files in {fonts_dir!r}.")
    return files


def font_coverage(path: str) -> set[str]:
    """Characters of :func:`candidate_characters` that the font at ``path`` really draws (see the
    module docstring: cmap entry whose glyph name decodes to the character). Empty if the file
    cannot be read as a font."""
    agl, TTFont, *_ = _lazy_imports()
    try:
        font = TTFont(path, lazy=True)
        cmap = font.getBestCmap() or {}
        has_names = float(font["post"].formatType) != 3.0 if "post" in font else False
    except Exception:  # noqa: BLE001 - any unreadable file simply contributes no characters
        return set()
    covered = set()
    for char in candidate_characters():
        glyph = cmap.get(ord(char))
        if glyph is None:
            continue
        if has_names and agl.toUnicode(glyph) != char:
            continue
        covered.add(char)
    return covered


def text_fonts(fonts_dir=None) -> dict[str, set[str]]:
    """``{font path: covered characters}`` for the text fonts of ``fonts_dir`` (see module doc)."""
    ascii_letters = {chr(c) for c in range(ord("A"), ord("Z") + 1)} | {chr(c) for c in range(ord("a"), ord("z") + 1)}
    fonts = {}
    for path in _font_files(fonts_dir):
        covered = font_coverage(path)
        if len(covered & ascii_letters) >= MIN_TEXT_LETTERS:
            fonts[path] = covered
    return fonts


class _Renderer:
    """Renders one character of one font to an ``(S, S)`` float32 array in [0, 1]."""

    def __init__(self, path: str, image_size: int):
        *_, Image, ImageDraw, ImageFont = _lazy_imports()
        self._image, self._draw = Image, ImageDraw
        self.size = image_size
        self.big = image_size * _SUPERSAMPLE
        self.font = ImageFont.truetype(path, size=max(4, int(round(self.big * _EM_FRACTION))))

    def glyph(self, char: str):
        """The glyph's ink as a tight ``L``-mode image, or None if it has no ink."""
        left, top, right, bottom = self.font.getbbox(char)
        if right <= left or bottom <= top:
            return None
        canvas = self._image.new("L", (right - left + 2, bottom - top + 2), 0)
        self._draw.Draw(canvas).text((1 - left, 1 - top), char, font=self.font, fill=255)
        box = canvas.getbbox()
        return None if box is None else canvas.crop(box)

    def render(self, glyph, rotation=0.0, scale=1.0, shift=(0.0, 0.0)) -> np.ndarray:
        Image = self._image
        width, height = glyph.size
        fit = min(1.0, _MAX_INK_FRACTION * self.big / max(width, height))
        if fit < 1.0:
            glyph = glyph.resize((max(1, round(width * fit)), max(1, round(height * fit))), Image.LANCZOS)
            width, height = glyph.size
        canvas = Image.new("L", (self.big, self.big), 0)
        canvas.paste(glyph, ((self.big - width) // 2, (self.big - height) // 2))
        if rotation or scale != 1.0 or shift != (0.0, 0.0):
            canvas = _affine(canvas, rotation, scale, shift, Image)
        small = canvas.resize((self.size, self.size), Image.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


def _affine(canvas, rotation_deg, scale, shift, Image):
    """Rotate by ``rotation_deg`` and scale by ``scale`` about the centre, then shift by
    ``shift`` (fractions of the side). PIL's transform wants the output -> input map."""
    side = canvas.size[0]
    centre = side / 2.0
    theta = np.deg2rad(rotation_deg)
    cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
    tx, ty = centre + shift[0] * side, centre + shift[1] * side
    # input = R^-1 S^-1 (output - t) + centre
    a, b, d, e = cos, sin, -sin, cos
    c = centre - a * tx - b * ty
    f = centre - d * tx - e * ty
    return canvas.transform(canvas.size, Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)


def _drop_duplicates(chars, renderer, threshold):
    """Keep the first of every group of (nearly) identical renders; ``(kept, {dropped: kept})``."""
    kept, kept_images, dropped = [], [], {}
    for char in chars:
        glyph = renderer.glyph(char)
        if glyph is None:
            continue
        image = renderer.render(glyph)
        if kept_images:
            distances = np.abs(np.stack(kept_images) - image).mean(axis=(1, 2))
            nearest = int(np.argmin(distances))
            if distances[nearest] < threshold:
                dropped[char] = kept[nearest]
                continue
        kept.append(char)
        kept_images.append(image)
    return kept, dropped


def _cache_key(params: dict, font_paths) -> str:
    fonts = [(os.path.basename(p), os.path.getsize(p)) for p in font_paths]
    blob = json.dumps({"version": _CACHE_VERSION, "params": params, "fonts": fonts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_glyph_dataset(
    fonts_dir=None,
    cache_dir=None,
    *,
    image_size: int = 32,
    copies: int = 2,
    seed: int = 0,
    min_fonts: int = 8,
    characters=None,
    reference_font: str | None = None,
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    test_fraction: float = 0.5,
) -> GlyphDataset:
    """Render (or load from the cache) the glyph retrieval dataset.

    Args:
        fonts_dir: folder of .ttf/.otf files; None: matplotlib's bundled fonts (22 text
            fonts in matplotlib 3.11: 12 DejaVu, 4 STIX, 6 Computer Modern; by default
            496 classes, 15,492 images).
        cache_dir: where the ``glyphs-<key>.npz`` cache lives; None: :func:`default_cache_dir`;
            False: no cache (always render).
        image_size: side S of the square images (>= 8; default 32).
        copies: augmented images per (character, font) (default 2).
        seed: seeds the augmentations and the train/test class split.
        min_fonts: a character is kept only if at least this many text fonts draw it; also the
            minimum number of text fonts the folder must hold (default 8).
        characters: optional iterable restricting the candidate characters (e.g. for quick
            tests); default: the letters and digits of :data:`BLOCKS`.
        reference_font: file name of the font used for near-duplicate detection; default: the
            text font that draws the most candidate characters (ties: file name order).
        duplicate_threshold: see :data:`DUPLICATE_THRESHOLD`; 0 keeps every character.
        test_fraction: fraction of the classes held out as unseen test classes (default 0.5).

    Returns:
        :class:`GlyphDataset`.

    Raises:
        FileNotFoundError: ``fonts_dir`` missing or without font files.
        ValueError: fewer than ``min_fonts`` text fonts, fewer than 2 classes per split, or an
            invalid parameter.
    """
    image_size = _positive_int(image_size, "image_size", 8)
    copies = _positive_int(copies, "copies")
    min_fonts = _positive_int(min_fonts, "min_fonts")
    seed = _positive_int(seed, "seed", 0)
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"`test_fraction` must lie strictly between 0 and 1; got {test_fraction!r}.")
    if float(duplicate_threshold) < 0:
        raise ValueError(f"`duplicate_threshold` must be >= 0; got {duplicate_threshold!r}.")
    candidates = candidate_characters()
    if characters is not None:
        wanted = set(characters)
        unknown = sorted(wanted - set(candidates))
        if unknown:
            raise ValueError(
                f"`characters` holds {len(unknown)} character(s) outside the letters/digits of the glyph "
                f"blocks ({', '.join(BLOCKS)}): {''.join(unknown[:20])!r}."
            )
        candidates = [c for c in candidates if c in wanted]

    font_paths = _font_files(fonts_dir)
    params = {
        "image_size": image_size,
        "copies": copies,
        "seed": seed,
        "min_fonts": min_fonts,
        "characters": "".join(candidates),
        "reference_font": reference_font,
        "duplicate_threshold": float(duplicate_threshold),
        "test_fraction": float(test_fraction),
    }
    cache_path = None
    if cache_dir is not False:
        cache_dir = default_cache_dir() if cache_dir is None else os.path.expanduser(os.fspath(cache_dir))
        cache_path = os.path.join(cache_dir, f"glyphs-{_cache_key(params, font_paths)}.npz")
        if os.path.isfile(cache_path):
            return _load(cache_path)

    dataset = _render_dataset(font_paths, fonts_dir, candidates, params)
    if cache_path is not None:
        _save(dataset, cache_path)
    return dataset


def _render_dataset(font_paths, fonts_dir, candidates, params) -> GlyphDataset:
    fonts = text_fonts(fonts_dir)
    if len(fonts) < params["min_fonts"]:
        skipped = sorted(os.path.basename(p) for p in font_paths if p not in fonts)
        raise ValueError(
            f"{len(fonts)} text font(s) in {os.path.dirname(font_paths[0])!r} but min_fonts="
            f"{params['min_fonts']}: add fonts or lower min_fonts. Not text fonts (fewer than "
            f"{MIN_TEXT_LETTERS} ASCII letters with matching glyph names): {skipped}."
        )
    paths = sorted(fonts, key=os.path.basename)
    counts = {c: sum(c in fonts[p] for p in paths) for c in candidates}
    frequent = [c for c in candidates if counts[c] >= params["min_fonts"]]

    reference = params["reference_font"]
    if reference is None:
        reference_path = max(paths, key=lambda p: (len(fonts[p]), [-ord(ch) for ch in os.path.basename(p)]))
    else:
        matches = [p for p in paths if os.path.basename(p) == reference]
        if not matches:
            raise ValueError(
                f"reference_font {reference!r} is not one of the text fonts: {[os.path.basename(p) for p in paths]}."
            )
        reference_path = matches[0]
    size = params["image_size"]
    in_reference = [c for c in frequent if c in fonts[reference_path]]
    kept, dropped = _drop_duplicates(in_reference, _Renderer(reference_path, size), params["duplicate_threshold"])
    # A frequent character the reference font lacks cannot be compared: keep it as is.
    kept = sorted(set(kept) | (set(frequent) - set(in_reference)), key=ord)
    min_classes = 4
    if len(kept) < min_classes:
        raise ValueError(
            f"Only {len(kept)} character class(es) are drawn by at least min_fonts={params['min_fonts']} fonts; "
            f"need {min_classes} (2 train, 2 test). Lower min_fonts or widen `characters`."
        )

    images, labels, font_ids = [], [], []
    for font_id, path in enumerate(paths):
        renderer = _Renderer(path, size)
        for label, char in enumerate(kept):
            if char not in fonts[path]:
                continue
            glyph = renderer.glyph(char)
            if glyph is None:
                continue
            rng = np.random.default_rng([params["seed"], ord(char), font_id])
            for _ in range(params["copies"]):
                rotation = rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG)
                scale = rng.uniform(*_SCALE_RANGE)
                shift = tuple(rng.uniform(-_MAX_SHIFT_FRACTION, _MAX_SHIFT_FRACTION, size=2))
                images.append(renderer.render(glyph, rotation, scale, shift))
                labels.append(label)
                font_ids.append(font_id)

    num_classes = len(kept)
    order = np.random.default_rng([params["seed"], num_classes]).permutation(num_classes)
    num_test = int(round(num_classes * params["test_fraction"]))
    num_test = min(max(num_test, 2), num_classes - 2)
    pixels = np.round(np.stack(images) * 255.0).astype(np.uint8)[..., None]
    return GlyphDataset(
        images=pixels,
        labels=np.asarray(labels, np.int64),
        font_ids=np.asarray(font_ids, np.int64),
        characters=tuple(kept),
        fonts=tuple(os.path.basename(p) for p in paths),
        train_classes=np.sort(order[num_test:]).astype(np.int64),
        test_classes=np.sort(order[:num_test]).astype(np.int64),
        dropped_duplicates=dropped,
        reference_font=os.path.basename(reference_path),
    )


def _save(dataset: GlyphDataset, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {
        "characters": "".join(dataset.characters),
        "fonts": list(dataset.fonts),
        "dropped_duplicates": dataset.dropped_duplicates,
        "reference_font": dataset.reference_font,
    }
    # Write then rename, so a concurrent reader never sees half a file.
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez_compressed(
        tmp,
        images=dataset.images,
        labels=dataset.labels,
        font_ids=dataset.font_ids,
        train_classes=dataset.train_classes,
        test_classes=dataset.test_classes,
        meta=json.dumps(meta),
    )
    os.replace(tmp, path)


def _load(path: str) -> GlyphDataset:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return GlyphDataset(
            images=data["images"],
            labels=data["labels"],
            font_ids=data["font_ids"],
            characters=tuple(meta["characters"]),
            fonts=tuple(meta["fonts"]),
            train_classes=data["train_classes"],
            test_classes=data["test_classes"],
            dropped_duplicates=dict(meta["dropped_duplicates"]),
            reference_font=meta["reference_font"],
        )
