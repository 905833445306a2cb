"""Export a Keras embedder to a TensorFlow SavedModel or to ONNX, then check the artifact.

Both exporters wrap the model in one serving function with

* a dynamic batch axis and a named input (the Keras input's name, or ``"images"`` when preprocessing is
  baked in) and a named output ``"embeddings"`` of shape (batch, D), float32;
* optionally, **preprocessing baked in**: the artifact takes uint8 RGB images (N, H, W, 3) of
  any H, W and applies a transform preset's test transform, the very function the evaluation
  pipeline uses (``keras_roadmap.data.eval_transform``; see :func:`imagenet_eval_preprocess`),
  so that a decoded image gives the embedding it was evaluated with;
* optionally, **L2 normalisation baked in** on the output.

After writing, the artifact is reloaded (``tf.saved_model.load`` / onnxruntime with an explicit
thread count), run on a seeded probe batch and on its first row alone (to prove the batch axis is
dynamic), and compared with the Keras model with the same preprocessing and normalisation applied
on the Keras side. A difference above ``atol`` raises :class:`ExportVerificationError`.

The serving contract (input name/dtype, the preset and its steps, image size, mean/std, L2 flag,
embedding size) is stored
in the artifact itself: as ONNX ``metadata_props`` under :data:`CONTRACT_KEY`, and for a
SavedModel as ``assets.extra/keras_roadmap.json``. The deployment scripts in the repository's
top-level ``export/`` folder read it, so they need no flags that must match the export.

This module is TensorFlow-specific on purpose; onnx, tf2onnx and onnxruntime are imported only
inside the functions that need them (``pip install keras-roadmap[export]``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# The one definition of the ImageNet statistics and of the presets (TensorFlow-free module).
from keras_roadmap.data.presets import IMAGENET_MEAN, IMAGENET_STD, TransformPreset, get_preset  # noqa: E402,F401

#: Preset used with ``with_preprocessing=True`` when none is given or recorded on the model
#: (the data pipelines' default too).
DEFAULT_PRESET = "sop"
#: Attribute a model may carry naming the preset it was trained with (set by the recipes and by
#: ``keras-roadmap export`` from the preset recorded in the ``.keras`` file).
MODEL_PRESET_ATTR = "_keras_roadmap_transform_preset"
from keras_roadmap import validation  # noqa: E402
from keras_roadmap.errors import KerasRoadmapError  # noqa: E402

#: Key of the JSON serving contract in ONNX ``metadata_props``.
CONTRACT_KEY = "keras_roadmap.serving_contract"
#: File holding the same contract inside a SavedModel directory.
SAVED_MODEL_CONTRACT_FILE = os.path.join("assets.extra", "keras_roadmap.json")
#: Name of the exported preprocessing, as written in the contract.
PREPROCESSING_NAME = "keras_roadmap.eval_transform"

OUTPUT_NAME = "embeddings"
FORMATS = ("saved_model", "onnx")
_VERIFY_THREADS = 2
_EXPORT_EXTRA_HINT = "pip install keras-roadmap[export]"


class ExportError(KerasRoadmapError, ValueError):
    """The model or the arguments cannot be exported as asked (the message says why)."""


class NotAnEmbedderError(ExportError):
    """The model does not map one input to one (batch, D) embedding tensor."""


class ExportVerificationError(KerasRoadmapError, RuntimeError):
    """The reloaded artifact's outputs differ from the Keras model's by more than ``atol``.

    Attributes:
        report: the :class:`ExportReport` of the failed check (``max_abs_diff`` included).
    """

    def __init__(self, message: str, report: ExportReport):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What was exported and how well it matches the Keras model.

    Attributes:
        path: where the artifact was written (a directory for SavedModel, a file for ONNX).
        format: ``"saved_model"`` or ``"onnx"``.
        input_name: name of the single input (``"images"`` with preprocessing, else the Keras
            input's name or ``"inputs"``).
        input_shape: input shape, ``None`` for dynamic axes, e.g. ``(None, None, None, 3)``.
        input_dtype: ``"uint8"`` with preprocessing baked in, else the model's input dtype.
        output_name: ``"embeddings"``.
        output_dim: embedding size D.
        with_preprocessing, image_size, l2_normalize: what was baked in.
        preset: name of the transform preset baked in (None without preprocessing).
        max_abs_diff: largest |artifact - Keras| over the probe batch (``nan`` if not verified).
        atol: the tolerance it was held to.
        seconds: wall time of export plus verification.
    """

    path: str
    format: str
    input_name: str
    input_shape: tuple
    input_dtype: str
    output_name: str
    output_dim: int
    with_preprocessing: bool
    image_size: int | None
    l2_normalize: bool
    max_abs_diff: float
    atol: float
    seconds: float
    preset: str | None = None

    def summary(self) -> str:
        """One line for logs and the CLI."""
        shape = "[" + ", ".join("?" if d is None else str(d) for d in self.input_shape) + "]"
        check = (
            "not verified"
            if np.isnan(self.max_abs_diff)
            else f"max |diff| vs Keras {self.max_abs_diff:.2e} (atol {self.atol:g})"
        )
        pre = f" (preprocessing: preset {self.preset})" if self.preset else ""
        return (
            f"exported {self.format} to {self.path}{pre}: '{self.input_name}' {self.input_dtype} {shape} "
            f"-> '{self.output_name}' float32 [?, {self.output_dim}]; {check}; {self.seconds:.1f} s"
        )


def imagenet_eval_preprocess(images, image_size: int | None = None, preset=DEFAULT_PRESET):
    """The evaluation transform baked into exported artifacts (TensorFlow ops, graph-safe).

    Exactly ``keras_roadmap.data.eval_transform_batch(images, preset, image_size=image_size)``:
    the preset's test resize (square, or shorter side with torchvision's rounding), PIL's
    antialiased bilinear filter, ``CenterCrop``, then ``ToTensor + Normalize`` (ImageNet). The
    evaluation pipeline (``make_eval_dataset``) applies the same function to each image.

    Args:
        images: uint8 (or any real dtype holding 0..255 values) tensor (N, H, W, 3), RGB.
        image_size: None = the preset's crop; another side scales the preset.
        preset: a preset name, ``TransformPreset`` or its dict. Default ``"sop"``.

    Returns:
        float32 tensor (N, S, S, 3).
    """
    from keras_roadmap.data.transforms import eval_transform_batch

    return eval_transform_batch(images, preset, image_size=image_size)


# --------------------------------------------------------------------------------------------
# Building the serving function


@dataclasses.dataclass(frozen=True)
class _ServingPlan:
    """Everything both exporters and the verifier share."""

    fn: Callable  # serving function: input tensor -> {"embeddings": (N, D)}
    keras_reference: Callable  # numpy input -> numpy (N, D), the Keras side of the parity check
    input_name: str
    input_shape: tuple
    input_dtype: str
    image_size: int | None
    probe: np.ndarray
    with_preprocessing: bool
    l2_normalize: bool
    preset: TransformPreset | None = None


def _model_input_shape(model) -> tuple | None:
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    if len(inputs) != 1:
        raise NotAnEmbedderError(
            f"The model has {len(inputs)} inputs; an embedder for export must take exactly one "
            "(a batch of images or feature vectors)."
        )
    return tuple(inputs[0].shape)


def _keras_input_name(model) -> str:
    """The Keras model's input name (e.g. "images" for our embedders), so that the artifact's
    input reads as the Keras one; "inputs" when Keras made the name up (``keras_tensor_N``)."""
    inputs = getattr(model, "inputs", None)
    name = str(getattr(inputs[0], "name", "") or "") if inputs else ""
    if not name or name.startswith("keras_tensor") or not name.replace("_", "a").isalnum():
        return "inputs"
    return name


def _model_input_dtype(model) -> str:
    inputs = getattr(model, "inputs", None)
    if inputs:
        return str(np.dtype(inputs[0].dtype))
    return "float32"


def _resolve_preset(model, input_shape, preset, image_size):
    """(preset, image_size) for with_preprocessing: explicit preset > the model's recorded one >
    DEFAULT_PRESET; its crop must match the model's input size unless image_size rescales it."""
    stated = preset is not None
    if preset is None:
        preset = getattr(model, MODEL_PRESET_ATTR, None)
        stated = preset is not None
    if preset is None:
        import warnings

        warnings.warn(
            f"with_preprocessing=True and no transform preset given or recorded on the model: baking in "
            f"the {DEFAULT_PRESET!r} preset's test transform. Pass preset=NAME (--preset NAME) to name the "
            "one the model was trained with.",
            UserWarning,
            stacklevel=4,
        )
        preset = DEFAULT_PRESET
    try:
        resolved = get_preset(preset)
    except (ValueError, TypeError) as exc:
        raise ExportError(str(exc)) from None
    fixed = None
    if input_shape is not None and len(input_shape) == 4 and input_shape[1] is not None:
        fixed = int(input_shape[1])
    if image_size is None and fixed is not None and fixed != resolved.crop_size:
        if stated:
            raise ExportError(
                f"The transform preset {resolved.name!r} crops {resolved.crop_size} px but the model takes "
                f"{fixed} px images: export with the preset the model was trained with, or pass "
                f"image_size={fixed} to rescale this one."
            )
        image_size = fixed
    image_size = _resolve_image_size(input_shape, image_size if image_size is not None else resolved.crop_size)
    return resolved.resized(image_size), image_size


def _resolve_image_size(input_shape: tuple | None, image_size: int | None) -> int:
    if input_shape is not None:
        if len(input_shape) != 4 or input_shape[-1] != 3:
            raise ExportError(
                f"with_preprocessing=True needs an image model taking (N, H, W, 3) inputs; this "
                f"model takes {input_shape}. Export it without preprocessing."
            )
        height, width = input_shape[1], input_shape[2]
        if height is not None and width is not None:
            if height != width:
                raise ExportError(
                    f"The model takes {height}x{width} images but the baked-in preprocessing "
                    "produces square crops; give the model a square (or dynamic) input size."
                )
            if image_size is not None and image_size != height:
                raise ExportError(
                    f"image_size={image_size} does not match the model's input size {height}; "
                    f"pass image_size={height} (or leave it out)."
                )
            return int(height)
    if image_size is None:
        raise ExportError(
            "with_preprocessing=True and the model's input size is dynamic: pass image_size "
            "(e.g. image_size=224, or --image-size 224 on the command line)."
        )
    if int(image_size) < 1:
        raise ExportError(f"image_size must be a positive integer, got {image_size}.")
    return int(image_size)


def _default_probe(input_shape, dtype: str, with_preprocessing: bool, image_size, seed: int, preset=None):
    rng = np.random.default_rng(seed)
    if with_preprocessing:
        # Non-square and larger than the resize, so that resize and crop both do real work.
        resize_to = preset.eval_resize
        return rng.integers(0, 256, size=(3, resize_to + 7, resize_to + 23, 3), dtype=np.uint8)
    if input_shape is None:
        raise ExportError(
            "The model has no known input shape (a subclassed model that was never built): pass "
            "probe=<a numpy batch the model accepts> so the export can be traced and checked."
        )
    dims = list(input_shape[1:])
    if any(d is None for d in dims):
        if len(dims) == 3 and dims[-1] is not None and image_size is not None:
            dims = [image_size, image_size, dims[-1]]
        else:
            raise ExportError(
                f"The model's input shape {input_shape} has dynamic axes besides the batch: pass "
                "image_size (image models) or probe=<a numpy batch> to fix the verification input."
            )
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(0, 256, size=(3, *dims)).astype(dtype)
    return rng.standard_normal((3, *dims)).astype(dtype)


def _plan(model, *, with_preprocessing, image_size, l2_normalize, probe, seed=0, preset=None) -> _ServingPlan:
    import keras
    import tensorflow as tf

    if not isinstance(model, keras.Model):
        raise ExportError(f"Expected a keras.Model, got {type(model).__name__}.")
    input_shape = _model_input_shape(model)
    if preset is not None and not with_preprocessing:
        raise ExportError("preset only applies with with_preprocessing=True (--with-preprocessing).")
    if with_preprocessing:
        if input_shape is not None and (len(input_shape) != 4 or input_shape[-1] != 3):
            _resolve_image_size(input_shape, image_size)  # raises the "needs an image model" error
        preset, image_size = _resolve_preset(model, input_shape, preset, image_size)
    elif image_size is not None and input_shape is not None and len(input_shape) != 4:
        raise ExportError(
            f"image_size={image_size} only applies to image models (N, H, W, 3); this model takes {input_shape}."
        )

    model_dtype = _model_input_dtype(model)
    if probe is None:
        probe = _default_probe(input_shape, model_dtype, with_preprocessing, image_size, seed, preset)
    probe = np.asarray(probe)
    if with_preprocessing:
        if probe.ndim != 4 or probe.shape[-1] != 3 or probe.dtype != np.uint8:
            raise ExportError(
                "With preprocessing baked in, probe must be uint8 images (N, H, W, 3); got "
                f"{probe.dtype} {probe.shape}."
            )
        signature_shape = (None, None, None, 3)
        input_name, input_dtype = "images", "uint8"
    else:
        if input_shape is not None:
            expected = tuple(input_shape[1:])
            ok = probe.ndim == len(input_shape) and all(
                e is None or e == g for e, g in zip(expected, probe.shape[1:], strict=False)
            )
            if not ok:
                raise ExportError(f"probe has shape {probe.shape}; the model takes {input_shape}.")
            signature_shape = (None, *expected)
            if any(d is None for d in expected) and image_size is not None:
                signature_shape = (None, image_size, image_size, expected[-1])
        else:
            signature_shape = (None, *probe.shape[1:])
        input_name, input_dtype = _keras_input_name(model), model_dtype
        probe = probe.astype(input_dtype, copy=False)
    if probe.shape[0] < 1:
        raise ExportError("probe must hold at least one example.")

    def embed(x):
        if with_preprocessing:
            x = imagenet_eval_preprocess(x, preset=preset)
        y = model(x, training=False)
        if isinstance(y, (list, tuple, dict)):
            raise NotAnEmbedderError(
                "The model returns several outputs; an embedder for export must return one (batch, D) tensor."
            )
        if len(y.shape) != 2:
            raise NotAnEmbedderError(
                f"Not an embedder: the model's output has shape {tuple(y.shape)} (rank "
                f"{len(y.shape)}); export needs a rank-2 (batch, D) embedding output. Add a "
                "pooling/Flatten + Dense head, or export the embedding sub-model."
            )
        y = tf.cast(y, tf.float32)
        if l2_normalize:
            y = keras.ops.normalize(y, axis=-1, order=2)
        return y

    def serve(x):
        return {OUTPUT_NAME: embed(x)}

    def keras_reference(batch: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(embed(tf.constant(batch)))

    return _ServingPlan(
        fn=serve,
        keras_reference=keras_reference,
        input_name=input_name,
        input_shape=tuple(signature_shape),
        input_dtype=input_dtype,
        image_size=image_size,
        probe=probe,
        with_preprocessing=with_preprocessing,
        l2_normalize=l2_normalize,
        preset=preset,
    )


def _input_spec(plan: _ServingPlan):
    import tensorflow as tf

    return tf.TensorSpec(plan.input_shape, tf.dtypes.as_dtype(plan.input_dtype), name=plan.input_name)


def serving_contract(plan_or_report) -> dict:
    """The JSON-serialisable serving contract stored in the artifact (see module docstring)."""
    p = plan_or_report
    contract = {
        "format_version": 1,
        "input_name": p.input_name,
        "input_dtype": p.input_dtype,
        "input_shape": list(p.input_shape),
        "output_name": OUTPUT_NAME,
        "output_dim": getattr(p, "output_dim", None),
        "l2_normalized": bool(p.l2_normalize),
        "preprocessing": None,
    }
    if p.with_preprocessing:
        preset = get_preset(p.preset)
        contract["preprocessing"] = {
            "name": PREPROCESSING_NAME,
            "preset": preset.name,
            "steps": preset.describe()["test"],
            "transform": preset.to_dict(),
            "image_size": p.image_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "input_value_range": [0, 255],
            "channels": "RGB",
        }
    return contract


# --------------------------------------------------------------------------------------------
# Verification


def _check(plan: _ServingPlan, run_artifact: Callable[[np.ndarray], np.ndarray]):
    """Max |artifact - Keras| over the probe and its first row alone; output dim."""
    expected = plan.keras_reference(plan.probe)
    got = np.asarray(run_artifact(plan.probe))
    if got.shape != expected.shape:
        raise ExportVerificationError(
            f"The reloaded artifact returned shape {got.shape}, the Keras model {expected.shape}.",
            report=None,
        )
    single = np.asarray(run_artifact(plan.probe[:1]))
    diff = max(float(np.max(np.abs(got - expected))), float(np.max(np.abs(single - expected[:1]))))
    if not np.all(np.isfinite(got)):
        diff = float("inf")
    return diff, int(expected.shape[1])


def _finish(plan, *, path, fmt, output_dim, diff, atol, started) -> ExportReport:
    report = ExportReport(
        path=str(path),
        format=fmt,
        input_name=plan.input_name,
        input_shape=plan.input_shape,
        input_dtype=plan.input_dtype,
        output_name=OUTPUT_NAME,
        output_dim=output_dim,
        with_preprocessing=plan.with_preprocessing,
        image_size=plan.image_size,
        l2_normalize=plan.l2_normalize,
        max_abs_diff=diff,
        atol=atol,
        seconds=time.perf_counter() - started,
        preset=plan.preset.name if plan.preset is not None else None,
    )
    if not np.isnan(diff) and not diff <= atol:
        raise ExportVerificationError(
            f"The exported {fmt} model at {path} differs from the Keras model by up to {diff:.3g} "
            f"(> atol={atol:g}) on the probe batch. The artifact was kept for inspection; check "
            "for ops the converter does not support exactly, or raise atol if this is expected.",
            report=report,
        )
    return report


def _validate_common(path, atol):
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ExportError(f"path must be a file system path, got {path!r}.")
    validation.number("atol", atol, owner="export", minimum=0)
    _make_parent(path)


def _make_parent(path) -> None:
    """Create the folder that will hold `path`; an ExportError naming the blocking file when a
    parent of `path` is a regular file (checked before any conversion work)."""
    parent = pathlib.Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), parent)
        raise ExportError(
            f"cannot write {path}: {blocker} is a file, not a folder; choose another output path."
        ) from err
    except OSError as err:
        raise ExportError(f"cannot create the folder {parent} for {path}: {err.strerror or err}.") from err


def _output_dim_of(plan: _ServingPlan) -> int:
    return int(plan.keras_reference(plan.probe[:1]).shape[1])


# --------------------------------------------------------------------------------------------
# Public exporters


def to_saved_model(
    model,
    path,
    *,
    with_preprocessing: bool = False,
    preset=None,
    image_size: int | None = None,
    l2_normalize: bool = False,
    verify: bool = True,
    atol: float = 1e-4,
    probe: np.ndarray | None = None,
) -> ExportReport:
    """Export an embedder as a TensorFlow SavedModel directory and check it.

    The SavedModel has endpoints ``serve`` and ``serving_default``; the signature takes
    ``images`` (uint8 (N, H, W, 3), with preprocessing) or ``inputs`` (the model's input dtype,
    (N, ...) with the model's per-example shape) and returns ``{"embeddings": float32 (N, D)}``.

    Args:
        model: a ``keras.Model`` with one input and one (batch, D) output.
        path: output directory (created; must not be an existing file).
        with_preprocessing: bake in :func:`imagenet_eval_preprocess` (the preset's test
            transform, as ``make_eval_dataset`` applies it). Default False.
        preset: with preprocessing, the transform preset ("sop", "sop_big", "cub", "cub_big",
            "inaturalist", "inshop", "inshop_big", a ``TransformPreset`` or its dict). Default:
            the preset recorded on the model (attribute ``MODEL_PRESET_ATTR``, set by the recipes
            and by ``keras-roadmap export``), else ``"sop"`` scaled to the model's input size
            (with a warning). Its crop must equal a fixed model input size.
        image_size: with preprocessing, the crop size: None = the preset's (or the model's fixed
            input size); another value rescales the preset. Without preprocessing, it fixes the
            spatial size of an image model whose input is dynamic (N, None, None, C), which the
            probe needs. Default None.
        l2_normalize: L2-normalise the output rows inside the artifact. Default False.
        verify: reload and compare with Keras on a probe batch. Default True.
        atol: largest allowed absolute difference. Default 1e-4.
        probe: the verification batch (numpy). Default: 3 seeded random examples (uint8 images
            of a non-square size larger than the crop when preprocessing is baked in).

    Returns:
        :class:`ExportReport`.

    Raises:
        NotAnEmbedderError: the model's output is not rank 2 (or it has several inputs/outputs).
        ExportError: other invalid arguments (message says which).
        ExportVerificationError: the reloaded SavedModel differs by more than ``atol``.
    """
    import keras
    import tensorflow as tf

    _validate_common(path, atol)
    started = time.perf_counter()
    plan = _plan(
        model,
        with_preprocessing=with_preprocessing,
        image_size=image_size,
        l2_normalize=l2_normalize,
        probe=probe,
        preset=preset,
    )
    output_dim = _output_dim_of(plan)  # also surfaces NotAnEmbedderError before writing anything
    path = pathlib.Path(path)
    if path.is_file():
        raise ExportError(f"{path} is an existing file; a SavedModel is written as a directory.")

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", plan.fn, input_signature=[_input_spec(plan)])
    archive.write_out(str(path), verbose=False)
    contract = serving_contract(plan)
    contract["output_dim"] = output_dim
    (path / "assets.extra").mkdir(exist_ok=True)
    (path / SAVED_MODEL_CONTRACT_FILE).write_text(json.dumps(contract, indent=2))

    diff = float("nan")
    if verify:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]

        def run(batch):
            return signature(**{plan.input_name: tf.constant(batch)})[OUTPUT_NAME].numpy()

        diff, output_dim = _check(plan, run)
    return _finish(plan, path=path, fmt="saved_model", output_dim=output_dim, diff=diff, atol=atol, started=started)


def _import_export_deps(*names):
    import importlib

    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise ImportError(
                f"ONNX export needs the optional package '{name}', which could not be imported "
                f"({exc}). Install the export extra: {_EXPORT_EXTRA_HINT}"
            ) from exc
    return modules


def _subgraphs(node):
    for attribute in node.attribute:
        if attribute.type == attribute.GRAPH:
            yield attribute.g
        yield from attribute.graphs


def _canonical_order(graph, outer=None) -> str:
    """Sort ``graph.node`` (and its subgraphs') by structure, not by name; return its hash.

    Each tensor gets a hash of what computes it (graph inputs by name, initializers by content,
    node outputs by op type, attributes and input hashes), and the nodes are put in topological
    order with ties broken by hash, so two conversions of one model order their nodes alike
    whatever tf2onnx named them.
    """
    import hashlib
    import heapq

    def digest(*parts):
        h = hashlib.sha1()
        for part in parts:
            h.update(part if isinstance(part, bytes) else str(part).encode())
            h.update(b"|")
        return h.hexdigest()

    values = dict(outer or {})
    for value in graph.input:
        values[value.name] = digest("input", value.name)
    for tensor in graph.initializer:
        copy = type(tensor)()
        copy.CopyFrom(tensor)
        copy.name = ""
        values[tensor.name] = digest("initializer", copy.SerializeToString(deterministic=True))
    hashes = []
    for node in graph.node:  # ONNX keeps nodes topologically sorted: inputs are known here
        parts = [node.op_type, node.domain]
        for attribute in node.attribute:
            if attribute.type in (attribute.GRAPH, attribute.GRAPHS):
                subs = [attribute.g] if attribute.type == attribute.GRAPH else list(attribute.graphs)
                parts.append(digest(attribute.name, *(_canonical_order(sub, values) for sub in subs)))
            else:
                parts.append(attribute.SerializeToString(deterministic=True))
        parts += [values.get(name, digest("outer", name)) for name in node.input]
        node_hash = digest(*parts)
        hashes.append(node_hash)
        for k, name in enumerate(node.output):
            values[name] = digest(node_hash, k)
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    waiting = [0] * len(graph.node)
    users = [[] for _ in graph.node]
    for i, node in enumerate(graph.node):
        for name in set(node.input) | {n for sub in _subgraphs(node) for sn in sub.node for n in sn.input}:
            if name in producer and producer[name] != i:
                waiting[i] += 1
                users[producer[name]].append(i)
    ready = [(hashes[i], i) for i in range(len(graph.node)) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (hashes[j], j))
    nodes = [type(graph.node[i])() for i in order]
    for copy, i in zip(nodes, order, strict=False):
        copy.CopyFrom(graph.node[i])
    del graph.node[:]
    graph.node.extend(nodes)
    return digest(*sorted(hashes), *(values.get(v.name, "") for v in graph.output))


def _canonical_names(graph) -> None:
    """Put ``graph``'s nodes in a structural order and rename every node and internal tensor
    by position.

    tf2onnx names constants and nodes after process-wide counters (``const_fold_opt__197``),
    and orders nodes and initializers by those names, so the same model exported twice gave
    different bytes. Nodes in structural order (:func:`_canonical_order`), names by first use,
    initializers in first-use order: a resumed recipe run exports the very bytes of an unbroken
    one. The graph's own inputs and outputs keep their names (the serving contract).
    """
    _canonical_order(graph)
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    mapping = {}

    def name_of(old):
        if old not in keep and old not in mapping:
            mapping[old] = f"t{len(mapping)}"
        return mapping.get(old, old)

    def collect(g):
        for node in g.node:
            for sub in _subgraphs(node):
                for value in sub.input:
                    name_of(value.name)
                collect(sub)
            for value in list(node.input) + list(node.output):
                name_of(value)
        for value in list(g.initializer) + list(g.value_info):
            name_of(value.name)

    count = [0]
    dims = {}

    def rename(g):
        for node in g.node:
            node.name = f"{node.op_type}_{count[0]}"
            count[0] += 1
            node.input[:] = [name_of(v) for v in node.input]
            node.output[:] = [name_of(v) for v in node.output]
            for k, sub in enumerate(_subgraphs(node)):
                sub.name = f"{node.name}_graph{k}"
                rename(sub)
        for value in list(g.input) + list(g.output) + list(g.value_info) + list(g.initializer):
            value.name = name_of(value.name)
        for value in list(g.input) + list(g.output) + list(g.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param.startswith("unk__"):  # tf2onnx's counter-numbered symbolic sizes
                    dim.dim_param = dims.setdefault(dim.dim_param, f"size{len(dims)}")
        ordered = sorted(g.initializer, key=lambda t: int(t.name[1:]) if t.name[1:].isdigit() else -1)
        copies = [type(t)() for t in ordered]
        for copy, tensor in zip(copies, ordered, strict=False):
            copy.CopyFrom(tensor)
        del g.initializer[:]
        g.initializer.extend(copies)

    collect(graph)
    rename(graph)
    graph.name = "keras_roadmap"


def _name_dynamic_axes(graph_io, names: Sequence[str | None]):
    """Give the symbolic axes readable names (tf2onnx calls them ``unk__N``)."""
    dims = graph_io.type.tensor_type.shape.dim
    for dim, name in zip(dims, names, strict=False):
        if name is not None and not dim.HasField("dim_value"):
            dim.dim_param = name


def to_onnx(
    model,
    path,
    *,
    opset: int = 17,
    with_preprocessing: bool = False,
    preset=None,
    image_size: int | None = None,
    l2_normalize: bool = False,
    verify: bool = True,
    atol: float = 1e-4,
    probe: np.ndarray | None = None,
) -> ExportReport:
    """Export an embedder as one ONNX file (via tf2onnx) and check it with onnxruntime.

    The graph takes ``images`` (uint8 [batch, height, width, 3], with preprocessing) or
    the Keras model's input name (``inputs`` when it has none of its own; [batch, ...], the
    model's per-example shape) and returns ``embeddings``
    (float32 [batch, D]). The serving contract is stored as JSON in ``metadata_props`` under
    :data:`CONTRACT_KEY`. Verification uses onnxruntime's CPU provider with
    ``intra_op_num_threads=2``.

    Other arguments, return value and errors: as :func:`to_saved_model`; in addition an
    ``ImportError`` naming ``keras-roadmap[export]`` when onnx, tf2onnx or onnxruntime
    (needed only with ``verify=True``) is missing.

    Args:
        opset: ONNX opset. Default 17.
    """
    import tensorflow as tf

    _validate_common(path, atol)
    if not isinstance(opset, int) or opset < 13:
        raise ExportError(f"opset must be an integer >= 13, got {opset!r}.")
    onnx, tf2onnx = _import_export_deps("onnx", "tf2onnx")
    ort = _import_export_deps("onnxruntime")[0] if verify else None

    started = time.perf_counter()
    plan = _plan(
        model,
        with_preprocessing=with_preprocessing,
        image_size=image_size,
        l2_normalize=l2_normalize,
        probe=probe,
        preset=preset,
    )
    output_dim = _output_dim_of(plan)
    path = pathlib.Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; ONNX export writes one file (e.g. model.onnx).")

    try:
        model_proto, _ = tf2onnx.convert.from_function(
            tf.function(plan.fn), input_signature=[_input_spec(plan)], opset=opset
        )
    except Exception as exc:  # noqa: BLE001 - converter failures surface as one readable error
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"tf2onnx could not convert the model at opset {opset}: {message}. Try a newer "
            "opset (--opset 18), or export a SavedModel instead."
        ) from exc
    spatial = ["batch", "height", "width", None] if with_preprocessing else ["batch"]
    _name_dynamic_axes(model_proto.graph.input[0], spatial)
    _name_dynamic_axes(model_proto.graph.output[0], ["batch"])
    contract = serving_contract(plan)
    contract["output_dim"] = output_dim
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, json.dumps(contract)
    model_proto.producer_name = "keras-roadmap"
    from keras_roadmap import __version__

    model_proto.producer_version = __version__
    # tf2onnx writes "converted from __inference_serve_<N>" with a process-wide counter: a fixed
    # text keeps the file bitwise reproducible (a resumed recipe run exports the same bytes).
    model_proto.graph.doc_string = "converted by keras-roadmap with tf2onnx"
    _canonical_names(model_proto.graph)
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as exc:
        # tf2onnx logs unsupported TF ops and leaves them in the graph; the checker catches them.
        message = str(exc).strip().splitlines()[0]
        raise ExportError(
            f"tf2onnx produced an invalid ONNX graph at opset {opset} ({message}): the model uses "
            "a TensorFlow op the converter does not support. Try a newer opset, replace that op, "
            "or export a SavedModel instead."
        ) from exc
    onnx.save(model_proto, str(path))

    diff = float("nan")
    if verify:
        options = ort.SessionOptions()
        options.intra_op_num_threads = _VERIFY_THREADS
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(batch):
            return session.run([OUTPUT_NAME], {plan.input_name: batch})[0]

        diff, output_dim = _check(plan, run)
    return _finish(plan, path=path, fmt="onnx", output_dim=output_dim, diff=diff, atol=atol, started=started)


def export(model, path, *, format: str, **kwargs) -> ExportReport:
    """Dispatch to :func:`to_onnx` (``format="onnx"``) or :func:`to_saved_model`.

    ``opset`` is accepted for ONNX only.
    """
    if format == "onnx":
        return to_onnx(model, path, **kwargs)
    if format == "saved_model":
        if "opset" in kwargs:
            if kwargs.pop("opset") is not None:
                raise ExportError("opset only applies to format='onnx'.")
        return to_saved_model(model, path, **kwargs)
    raise ExportError(f"Unknown export format {format!r}; choose one of: {', '.join(FORMATS)}.")


def read_onnx_contract(path) -> dict[str, Any]:
    """Read the serving contract stored by :func:`to_onnx` (needs only the ``onnx`` package)."""
    (onnx,) = _import_export_deps("onnx")
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == CONTRACT_KEY:
            return json.loads(prop.value)
    raise ExportError(f"{path} has no keras-roadmap serving contract (was it exported by to_onnx?).")
