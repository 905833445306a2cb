"""The official ROADMAP image transforms as named presets (plain data: no TensorFlow here).

Each preset is one file of the official repository, `roadmap/config/transform/<name>.yaml` in
elias-ramzi/ROADMAP, where torchvision runs on PIL images (bilinear, antialiased):

    preset      train                                   test
    sop         Resize(256) + RRC(224)                  Resize([256, 256]) + CenterCrop(224)
    sop_big     Resize(288) + RRC(256)                  Resize([288, 288]) + CenterCrop(256)
    cub         RRC(224)                                Resize(256) + CenterCrop(224)
    cub_big     RRC(256)                                Resize(288) + CenterCrop(256)
    inaturalist RRC(224)                                Resize(256) + CenterCrop(224)
    inshop_big  RRC(256)                                Resize([288, 288]) + CenterCrop(256)
    inshop      RRC(224)                                Resize([256, 256]) + CenterCrop(224)
    recall_at_k RRC(224)*                               Resize(256) + CenterCrop(224)

`Resize(n)` resizes the shorter side to n (aspect ratio kept), `Resize([n, n])` to an n x n
square (aspect ratio not kept). RRC = RandomResizedCrop(scale (0.16, 1), ratio (0.75, 1.33)),
then RandomHorizontalFlip(0.5); every preset ends with ToTensor + the ImageNet Normalize.
*`recall_at_k` is not a ROADMAP file but RS@k's `src/datasets.py` (yash0307/RecallatK_surrogate):
its RRC keeps torchvision's default scale (0.08, 1) and ratio (3/4, 4/3).
`inshop` has no official file (the repository ships only `inshop_big`): it is `inshop_big`
at the 224 crop, as `sop` is `sop_big` at 224.

`keras_roadmap.data.transforms` applies a preset; this module only describes it, so the
exporters, the recipe configs and the serving contract can name and record a preset without
importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile

#: ImageNet channel statistics (RGB, on pixel values scaled to [0, 1]): what every preset
#: normalises with and what torchvision / timm ResNet and DeiT weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The one background transparent pixels are composited on (RGB, uint8), by the tf.data decoder
#: (`keras_roadmap.data.transforms.decode_image`) and the Pillow one
#: (`keras_roadmap.data.custom.load_rgb`) alike. The colour a file stores under a transparent
#: pixel is arbitrary (black, white or leftovers, differing between sources), so dropping alpha
#: would teach the net the source; white is what product and logo images are shown on.
TRANSPARENT_BACKGROUND = (255, 255, 255)
#: RandomResizedCrop area fraction and aspect ratio, as written in the official yaml files
#: (1.33, not 4/3).
CROP_SCALE = (0.16, 1.0)
CROP_RATIO = (0.75, 1.33)
#: torchvision's `RandomResizedCrop` defaults (what RS@k's transforms leave unset).
TORCHVISION_CROP_SCALE = (0.08, 1.0)
TORCHVISION_CROP_RATIO = (3 / 4, 4 / 3)

_OFFICIAL = "elias-ramzi/ROADMAP roadmap/config/transform/{}.yaml"


@dataclasses.dataclass(frozen=True)
class TransformPreset:
    """One train + test transform pair.

    Attributes:
        name: preset name ("sop", ..., or "<name>@<crop>" for a rescaled preset).
        crop_size: side S of the square crop the model sees (train and test).
        train_resize: shorter side the image is resized to before the random crop; None = the
            random crop reads the original image.
        eval_resize: test resize: the shorter side (aspect ratio kept) or, with `eval_square`,
            both sides.
        eval_square: True = `Resize([eval_resize, eval_resize])`, False = `Resize(eval_resize)`.
        scale, ratio: RandomResizedCrop area fraction and width / height ranges.
        flip: probability of the horizontal flip.
        source: the official file it transcribes.
    """

    name: str
    crop_size: int
    train_resize: int | None
    eval_resize: int
    eval_square: bool
    scale: tuple = CROP_SCALE
    ratio: tuple = CROP_RATIO
    flip: float = 0.5
    source: str = ""

    def __post_init__(self):
        for field in ("crop_size", "eval_resize"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformPreset.{field} must be a positive int; got {value!r}.")
        if self.train_resize is not None and (
            not isinstance(self.train_resize, int) or self.train_resize < self.crop_size
        ):
            raise ValueError(
                f"TransformPreset.train_resize must be None or an int >= crop_size ({self.crop_size}); "
                f"got {self.train_resize!r}."
            )
        if self.eval_resize < self.crop_size:
            raise ValueError(
                f"TransformPreset.eval_resize ({self.eval_resize}) must be >= crop_size ({self.crop_size})."
            )
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"TransformPreset: invalid scale {self.scale} or ratio {self.ratio}.")

    def resized(self, crop_size: int) -> TransformPreset:
        """The same transform for another crop side: every size scaled by `crop_size / crop_size`
        (rounded), e.g. `get_preset("sop").resized(32)` for a smoke run at 32 px."""
        crop_size = int(crop_size)
        if crop_size == self.crop_size:
            return self
        factor = crop_size / self.crop_size
        base = self.name.split("@")[0]
        return dataclasses.replace(
            self,
            name=f"{base}@{crop_size}",
            crop_size=crop_size,
            train_resize=None if self.train_resize is None else max(crop_size, round(self.train_resize * factor)),
            eval_resize=max(crop_size, round(self.eval_resize * factor)),
        )

    def describe(self) -> dict:
        """The preset in torchvision's words: {"train": [...], "test": [...]}."""
        rrc = f"RandomResizedCrop({self.crop_size}, scale={list(self.scale)}, ratio={list(self.ratio)})"
        train = ([f"Resize({self.train_resize})"] if self.train_resize else []) + [
            rrc,
            f"RandomHorizontalFlip({self.flip})",
        ]
        size = f"[{self.eval_resize}, {self.eval_resize}]" if self.eval_square else str(self.eval_resize)
        test = [f"Resize({size})", f"CenterCrop({self.crop_size})"]
        tail = ["ToTensor()", f"Normalize(mean={list(IMAGENET_MEAN)}, std={list(IMAGENET_STD)})"]
        return {"train": train + tail, "test": test + tail}

    def to_dict(self) -> dict:
        """JSON-serialisable form (what the serving contract and model files record)."""
        out = dataclasses.asdict(self)
        out["scale"], out["ratio"] = list(self.scale), list(self.ratio)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TransformPreset:
        """Inverse of `to_dict`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"Unknown TransformPreset keys {sorted(unknown)}; expected {sorted(fields)}.")
        data = dict(data)
        for key in ("scale", "ratio"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)


def _official(name, crop, train_resize, eval_resize, square):
    return TransformPreset(name, crop, train_resize, eval_resize, square, source=_OFFICIAL.format(name))


PRESETS = {
    "sop": _official("sop", 224, 256, 256, True),
    "sop_big": _official("sop_big", 256, 288, 288, True),
    "cub": _official("cub", 224, None, 256, False),
    "cub_big": _official("cub_big", 256, None, 288, False),
    "inaturalist": _official("inaturalist", 224, None, 256, False),
    "inshop_big": _official("inshop_big", 256, None, 288, True),
    "inshop": TransformPreset(
        "inshop",
        224,
        None,
        256,
        True,
        source="none: the repository ships only inshop_big; this is inshop_big at the 224 crop",
    ),
    # yash0307/RecallatK_surrogate src/datasets.py (TrainDatasetrsk, BaseTripletDataset): torchvision's
    # RandomResizedCrop(224) with its default scale and ratio, and Resize(256) + CenterCrop(224).
    "recall_at_k": TransformPreset(
        "recall_at_k",
        224,
        None,
        256,
        False,
        scale=TORCHVISION_CROP_SCALE,
        ratio=TORCHVISION_CROP_RATIO,
        source="yash0307/RecallatK_surrogate src/datasets.py: RandomResizedCrop(224) with torchvision's defaults",
    ),
    # Ours: the glyph renderings are already 32x32, so the test transform is the identity resize.
    "glyphs": TransformPreset(
        "glyphs",
        32,
        None,
        32,
        True,
        source="none: keras_roadmap.data.glyphs renders 32x32 images; no official counterpart",
    ),
}

#: The preset each README command of the official repository trains with (dataset, backbone).
PAPER_PRESETS = {
    ("sop", "resnet50"): "sop_big",
    ("sop", "deit"): "sop",
    ("cub", "resnet50"): "cub_big",
    ("cub", "deit"): "cub",
    ("inaturalist", "resnet50"): "inaturalist",
}

PresetLike = str | TransformPreset | dict


def get_preset(preset: PresetLike = "sop", image_size: int | None = None) -> TransformPreset:
    """Resolve a preset name (see `PRESETS`), a `TransformPreset` or its `to_dict()` form.

    Args:
        preset: the preset. Default "sop".
        image_size: None keeps the preset's crop; another side gives `preset.resized(image_size)`
            (all sizes scaled; for small test models).

    Raises:
        ValueError: unknown name (the message lists the presets) or invalid sizes.
    """
    if isinstance(preset, TransformPreset):
        resolved = preset
    elif isinstance(preset, dict):
        resolved = TransformPreset.from_dict(preset)
    elif isinstance(preset, str):
        base, _, crop = preset.partition("@")
        if base not in PRESETS:
            raise ValueError(f"Unknown transform preset {preset!r}; choose one of {sorted(PRESETS)}.")
        resolved = PRESETS[base]
        if crop:
            if not crop.isdigit():
                raise ValueError(f"Transform preset {preset!r}: the part after '@' must be a crop size in pixels.")
            resolved = resolved.resized(int(crop))
    else:
        raise TypeError(f"preset must be a preset name, a TransformPreset or a dict; got {type(preset).__name__}.")
    if image_size is not None:
        if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
            raise ValueError(f"image_size must be a positive integer; got {image_size!r}.")
        resolved = resolved.resized(int(image_size))
    return resolved


# ---------------------------------------------------------------------------------------------
# Recording a model's preset in its .keras file, so that export defaults to what it trained with

#: Name of the entry added to a `.keras` archive (a zip; Keras ignores entries it does not know).
MODEL_PRESET_ENTRY = "keras_roadmap_transform.json"


def write_model_preset(model_path, preset: PresetLike) -> None:
    """Record `preset` inside a saved `.keras` file (added as one zip entry, replacing any)."""
    preset = get_preset(preset)
    payload = json.dumps({"transform_preset": preset.to_dict()})
    with zipfile.ZipFile(model_path) as archive:
        entries = {info.filename for info in archive.infolist()}
    if MODEL_PRESET_ENTRY not in entries:
        with zipfile.ZipFile(model_path, "a") as archive:
            archive.writestr(MODEL_PRESET_ENTRY, payload)
        return
    # Zip files cannot replace an entry in place: rewrite the archive without the old one.
    with zipfile.ZipFile(model_path) as archive:
        kept = [(info, archive.read(info)) for info in archive.infolist() if info.filename != MODEL_PRESET_ENTRY]
    with zipfile.ZipFile(model_path, "w") as archive:
        for info, data in kept:
            archive.writestr(info, data)
        archive.writestr(MODEL_PRESET_ENTRY, payload)


def read_model_preset(model_path) -> TransformPreset | None:
    """The preset recorded by `write_model_preset`, or None (not recorded / not a .keras zip)."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            if MODEL_PRESET_ENTRY not in archive.namelist():
                return None
            data = json.loads(archive.read(MODEL_PRESET_ENTRY))
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError):
        return None
    return TransformPreset.from_dict(data["transform_preset"])
