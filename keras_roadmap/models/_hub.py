"""Lazy access to keras-hub (the optional `[hub]` extra) and its preset loading."""

from __future__ import annotations


def import_keras_hub(hint: str = ""):
    """Return the ``keras_hub`` module or raise an ImportError naming the extra to install."""
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            "This embedder needs keras-hub: `pip install keras-roadmap[hub]` "
            "(tested with keras-hub==0.32.0)." + (f" {hint}" if hint else "")
        ) from error
    return keras_hub


def backbone_from_preset(preset: str, expected_cls, **overrides):
    """Load a keras-hub backbone preset (directory or name) and check its class.

    ``overrides`` update the preset's config (e.g. ``image_shape``, ``name``). Raises
    ValueError if the preset holds another architecture, RuntimeError (with the cause attached)
    if a named preset cannot be fetched.
    """
    import os

    keras_hub = import_keras_hub()
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, **overrides)
    except (ConnectionError, OSError) as error:
        if os.path.isdir(preset):
            raise
        raise RuntimeError(
            f"Could not fetch keras-hub preset {preset!r} ({type(error).__name__}). Offline? "
            "Download it once and pass the local preset directory as `weights`."
        ) from error
    if not isinstance(backbone, expected_cls):
        raise ValueError(
            f"Preset {preset!r} holds a {type(backbone).__name__}, but this embedder needs a {expected_cls.__name__}."
        )
    return backbone
