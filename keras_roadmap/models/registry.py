"""Name registry of embedders and the `build_embedder` factory (timm-style)."""

from __future__ import annotations

import os
from collections.abc import Callable

import keras

from keras_roadmap.models.batchnorm import batchnorm_mode

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}

# Input layer name of every embedder: exported SavedModels / ONNX graphs get this input name.
INPUT_NAME = "images"


def register_embedder(name: str):
    """Decorator registering ``builder`` under ``name`` for :func:`build_embedder`.

    The builder is called as ``builder(*, input_shape, embedding_dim, l2_normalize,
    freeze_batchnorm, backbone_weights, **kwargs)`` and returns a ``keras.Model`` whose input is
    named ``"images"``, whose backbone is a nested model named ``"backbone"`` and whose head
    layers are named ``"head_*"``. ``embedding_dim=None`` means the builder's own default;
    ``backbone_weights`` is None or a keras-hub preset (directory or name). Registering a name
    twice is an error.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Embedder name must be a non-empty string, got {name!r}.")

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"An embedder named {name!r} is already registered.")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_embedders() -> list[str]:
    """Sorted names accepted by :func:`build_embedder`."""
    return sorted(_REGISTRY)


def _check_input_shape(input_shape):
    shape = tuple(input_shape)
    if len(shape) != 3 or any(d is not None and (int(d) != d or d < 1) for d in shape):
        raise ValueError(f"input_shape must be (height, width, channels) with positive ints, got {input_shape!r}.")
    if shape[2] is None:
        raise ValueError(f"input_shape needs a known channel count, got {input_shape!r}.")
    return shape


class RandomWeightsWarning(UserWarning):
    """An embedder whose paper runs start from ImageNet weights was built with random ones."""


RANDOM = "random"


def _resolve_weights(weights):
    """Return ("embedder_file", path), ("torch_checkpoint", path), ("backbone_preset", str),
    or (None, None) for random initialisation (weights None or "random")."""
    if weights is None or weights == RANDOM:
        return None, None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "weights must be None, 'random', a path to a .weights.h5 file, a torchvision/timm "
            f"checkpoint (.pth, .safetensors), a keras-hub preset directory or a preset name; got "
            f"{type(weights).__name__}."
        )
    path = os.path.expanduser(os.fspath(weights))
    from keras_roadmap.models.convert import is_checkpoint_path

    if is_checkpoint_path(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path!r}.")
        return "torch_checkpoint", path
    if path.endswith(".keras"):
        raise ValueError(
            f"weights={path!r} is a whole saved model: load it with keras.models.load_model "
            "(custom objects register on `import keras_roadmap`), or save the weights only with "
            "model.save_weights('embedder.weights.h5')."
        )
    if path.endswith(".h5"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Embedder weights file not found: {path!r}.")
        return "embedder_file", path
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"weights={path!r} is a directory but not a keras-hub preset (no config.json in "
                "it). Save one with `backbone.save_to_preset(dir)`."
            )
        return "backbone_preset", path
    if os.sep in path or path.startswith("."):
        raise FileNotFoundError(
            f"weights path not found: {path!r} (expected a .weights.h5 file or a keras-hub preset directory)."
        )
    return "backbone_preset", path  # a named preset, downloaded by keras-hub (needs network)


def build_embedder(
    name: str,
    *,
    embedding_dim: int | None = None,
    weights: str | os.PathLike | None = None,
    input_shape: tuple = (224, 224, 3),
    l2_normalize: bool = True,
    freeze_batchnorm: bool = True,
    **kwargs,
) -> keras.Model:
    """Build a registered image embedder: images (B, H, W, C) -> embeddings (B, D) float32.

    Args:
        name: one of :func:`list_embedders` ("resnet50", "resnet50_max_ln", "deit_small",
            "deit_small_distilled", "deit_base", "tiny_cnn", plus any you register).
            "resnet50*" are ResNet-50 **v1.5** (torchvision's, the paper's) from keras-hub;
            ``variant="keras_applications"`` gives keras.applications' v1 instead.
        embedding_dim: projection size; None = the paper's default for that model (512 for
            ResNet-50, none for DeiT so D = 384 / 768, 64 for tiny_cnn).
        weights: None (random init, with a :class:`RandomWeightsWarning` for the models the
            paper starts from ImageNet weights), ``"random"`` (random init, no warning), a
            torchvision / timm checkpoint for the backbone (``.pth`` state dict as torchvision
            downloads it, e.g. ``resnet50-0676ba61.pth``, or ``.safetensors``; see
            :mod:`keras_roadmap.models.convert`; ``deit_small_distilled`` drops the distillation
            token as the official code does), a ``.weights.h5`` file of this embedder (saved with
            ``model.save_weights``, loaded after building), a keras-hub preset *directory* for the
            backbone (e.g. one saved with ``backbone.save_to_preset``), or a keras-hub preset
            name such as ``"resnet_50_imagenet"`` (downloaded: needs network). For
            ``variant="keras_applications"`` ResNet-50, ``"imagenet"`` loads keras' weights.
        input_shape: (H, W, C), default (224, 224, 3). Inputs are ImageNet-normalised RGB:
            ``(rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD``, what ``keras_roadmap.data`` yields.
        l2_normalize: end with L2 normalisation (default True).
        freeze_batchnorm: True (default) or "statistics": every BatchNormalization layer
            normalises with fixed running statistics while gamma/beta still train (the paper's
            ``freeze_batchnorm``); "all": gamma/beta frozen too; False: plain BatchNorm.
        **kwargs: builder-specific options (e.g. ``variant`` for ResNet-50, ``token`` for DeiT,
            ``width`` for tiny_cnn).

    Returns:
        A functional ``keras.Model`` named ``"<name>_embedder"`` with input ``"images"``; the
        backbone is ``model.get_layer("backbone")``, head layers are named ``"head_*"``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad argument.
        FileNotFoundError: a weights path that does not exist.

    Under ``keras.config.set_floatx("float64")`` the embedder computes and outputs float64.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown embedder {name!r}. Known embedders: {', '.join(list_embedders())}.")
    input_shape = _check_input_shape(input_shape)
    kind, source = _resolve_weights(weights)
    model = _REGISTRY[name](
        input_shape=input_shape,
        embedding_dim=embedding_dim,
        l2_normalize=bool(l2_normalize),
        freeze_batchnorm=batchnorm_mode(freeze_batchnorm) or False,
        backbone_weights=source if kind == "backbone_preset" else None,
        **kwargs,
    )
    if kind == "torch_checkpoint":
        from keras_roadmap.models.convert import load_checkpoint

        if kwargs.get("variant") not in (None, "torchvision", "timm"):
            raise ValueError(
                f"A torchvision/timm checkpoint loads into the default variant of {name!r}, not "
                f"variant={kwargs['variant']!r}."
            )
        load_checkpoint(model, name, source)
    elif kind is None and weights is None:
        from keras_roadmap.models.convert import PRETRAINED

        if name in PRETRAINED:
            import warnings

            warnings.warn(
                f"build_embedder({name!r}) with weights=None: the backbone is randomly "
                f"initialised, but the paper starts from ImageNet weights ({PRETRAINED[name]}). "
                "Pass weights=PATH to that file, or weights='random' to silence this warning.",
                RandomWeightsWarning,
                stacklevel=2,
            )
    if kind == "embedder_file":
        try:
            model.load_weights(source)
        except ValueError as error:
            raise ValueError(
                f"Weights file {source!r} does not fit embedder {name!r} with "
                f"input_shape={input_shape} and embedding_dim={embedding_dim}: {error}"
            ) from error
    return model
