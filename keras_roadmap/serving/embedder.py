"""The serving side: an exported keras-roadmap ONNX embedder run with onnxruntime.

Only onnxruntime, numpy and Pillow are imported (no TensorFlow). The ONNX model carries its
serving contract in its metadata (image size, whether embeddings are L2-normalised, ...), as
written by ``keras-roadmap export --format onnx --with-preprocessing`` or by a recipe
(``keras-roadmap train``), so nothing here needs flags that must match the export.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

# Must equal keras_roadmap.export.CONTRACT_KEY (a test checks it); repeated here because
# keras_roadmap.export imports TensorFlow, which serving must not.
CONTRACT_KEY = "keras_roadmap.serving_contract"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ServingError(Exception):
    """A problem the user can fix (bad model, missing or corrupt image, ...)."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_images(root: str) -> list[str]:
    """Image files under ``root`` (recursive), sorted, as paths relative to ``root``."""
    if not os.path.isdir(root):
        raise ServingError(f"image folder not found: {root}")
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root))
    if not found:
        raise ServingError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return sorted(found)


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Decode the bytes of one image file as uint8 (H, W, 3) RGB, as training decodes it
    (:func:`keras_roadmap.data.custom.load_rgb`: transparency composited on one fixed background,
    an animation's first frame); ``name`` appears in errors."""
    import io

    from PIL import Image, UnidentifiedImageError

    from keras_roadmap.data.custom import load_rgb as decode

    try:
        return decode(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ServingError(f"cannot decode image {name}: not an image format Pillow reads") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ServingError(f"cannot decode image {name}: {exc}") from exc


def read_file(path: str) -> bytes:
    """The bytes of an image file (ServingError naming it when it is absent or unreadable)."""
    if not os.path.isfile(path):
        raise ServingError(f"image not found: {path}")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ServingError(f"cannot read image {path}: {exc.strerror or exc}") from exc


def load_rgb(path: str) -> np.ndarray:
    """Decode one image as uint8 (H, W, 3) RGB."""
    return decode_rgb(read_file(path), path)


class OnnxEmbedder:
    """An exported keras-roadmap embedder run with onnxruntime.

    Args:
        model_path: the ``.onnx`` file.
        threads: onnxruntime ``intra_op_num_threads`` (set explicitly: ORT's default oversubscribes
            small shared machines). Default 2.

    Attributes:
        contract: the serving contract dict stored at export time.
        dim: embedding size D.
    """

    def __init__(self, model_path: str, threads: int = 2):
        import onnxruntime as ort

        if not os.path.isfile(model_path):
            raise ServingError(f"ONNX model not found: {model_path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ServingError(f"cannot load ONNX model {model_path}: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if CONTRACT_KEY not in meta:
            raise ServingError(
                f"{model_path} has no keras-roadmap serving contract; export it with "
                "`keras-roadmap export --format onnx --with-preprocessing ...`"
            )
        self.contract = json.loads(meta[CONTRACT_KEY])
        if not self.contract.get("preprocessing"):
            raise ServingError(
                f"{model_path} was exported without preprocessing; keras-roadmap index/search feed raw images, "
                "so re-export it with --with-preprocessing (and --image-size N)"
            )
        self.model_path = model_path
        self.input_name = self.contract["input_name"]
        self.output_name = self.contract["output_name"]
        self.dim = int(self.contract["output_dim"])

    def embed_arrays(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Embed uint8 (H, W, 3) images of any sizes; returns float32 (N, D), rows L2-normalised.

        Images of equal size are batched together (one ONNX call needs one H, W); the order of
        the output rows is the order of ``images``.
        """
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape[:2], []).append(index)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = np.stack([images[i] for i in chunk])
                out[chunk] = self.session.run([self.output_name], {self.input_name: batch})[0]
        if not self.contract["l2_normalized"]:
            # Search is by cosine similarity (inner product of unit vectors), as in ROADMAP.
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return out

    def embed_files(self, paths: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Decode and embed image files; float32 (N, D). Raises ServingError naming a bad file."""
        return self.embed_arrays([load_rgb(p) for p in paths], batch_size=batch_size)
