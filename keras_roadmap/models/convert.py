"""Load torchvision ResNet-50 and timm / DeiT checkpoints into our Keras trunks.

The paper starts from torchvision's ImageNet ResNet-50 and timm's DeiT. These functions read
such a checkpoint (a ``.pth`` / ``.pt`` / ``.bin`` state dict as torchvision or DeiT publish it,
or a ``.safetensors`` file as timm's hub copies are) and write it into the ``"torchvision"`` /
``"timm"`` variants of :mod:`keras_roadmap.models.resnet` / :mod:`keras_roadmap.models.deit`,
whose layer names are the checkpoint's module paths with "." -> "_". Every trunk weight must be
found in the checkpoint and every checkpoint tensor must be used (except the ImageNet classifier
and, for distilled DeiT, the distillation token), or ValueError says which.

A state dict of the official ROADMAP ``RetrievalNet`` (``net.state_dict()``, or the
``"net_state"`` entry of its training checkpoints when saved with tensors only) loads too: its
``backbone.*`` go to the trunk and its ``fc`` projection to ``head_projection``.

``build_embedder("resnet50", weights="resnet50-0676ba61.pth")`` calls :func:`load_checkpoint`.
Reading ``.pth`` files needs ``torch`` (``pip install keras-roadmap[torch]``); ``.safetensors``
needs only the ``safetensors`` package.
"""

from __future__ import annotations

import os

import numpy as np

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

# Which checkpoint layout each embedder's default variant reads.
ARCHITECTURES = {
    "resnet50": "torchvision_resnet",
    "resnet50_max_ln": "torchvision_resnet",
    "deit_small": "timm_vit",
    "deit_base": "timm_vit",
    "deit_small_distilled": "timm_vit",
}

# Where the paper's checkpoints come from, and the file names users get (torchvision's and the
# DeiT authors' URLs; timm >= 0.9 serves the same weights from its hub as model.safetensors).
PRETRAINED = {
    "resnet50": (
        "torchvision ResNet50_Weights.IMAGENET1K_V1 (the paper's `pretrained=True`): file "
        "resnet50-0676ba61.pth, e.g. `torchvision.models.resnet50(weights='IMAGENET1K_V1')` "
        "saves it to ~/.cache/torch/hub/checkpoints/"
    ),
    "deit_small": (
        "timm deit_small_patch16_224 (fb_in1k): file deit_small_patch16_224-cd65a155.pth from "
        "the DeiT release, or model.safetensors of timm/deit_small_patch16_224.fb_in1k"
    ),
    "deit_small_distilled": (
        "timm deit_small_distilled_patch16_224 (fb_in1k): file "
        "deit_small_distilled_patch16_224-649709d9.pth from the DeiT release, or "
        "model.safetensors of timm/deit_small_distilled_patch16_224.fb_in1k"
    ),
    "deit_base": (
        "timm deit_base_patch16_224 (fb_in1k): file deit_base_patch16_224-b5f2ef4d.pth from the "
        "DeiT release, or model.safetensors of timm/deit_base_patch16_224.fb_in1k"
    ),
}
PRETRAINED["resnet50_max_ln"] = PRETRAINED["resnet50"]

# Checkpoint tensors that are not part of the trunk.
_IGNORED = {
    "torchvision_resnet": ("fc.",),
    "timm_vit": ("head.", "head_dist.", "dist_token", "fc_norm.", "pre_logits."),
}


def is_checkpoint_path(path) -> bool:
    """True if ``path`` names a torch/timm checkpoint by its suffix (.pth .pt .bin .safetensors)."""
    return os.fspath(path).lower().endswith(CHECKPOINT_SUFFIXES)


def read_state_dict(path) -> dict:
    """``{name: float numpy array}`` from a ``.safetensors`` file or a torch-saved state dict.

    A dict wrapping the state dict under ``"model"`` or ``"state_dict"`` (the DeiT release,
    training checkpoints) is unwrapped, and a ``"module."`` prefix (DataParallel) is removed.
    ``.pth`` files are read with ``torch.load(weights_only=True)``: no code from the file runs.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path!r}.")
    if path.lower().endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError as error:
            raise ImportError(
                "Reading .safetensors checkpoints needs safetensors: pip install 'keras-roadmap[torch]'."
            ) from error
        state = dict(load_file(path))
    else:
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"Reading {os.path.basename(path)} needs torch: pip install 'keras-roadmap[torch]' "
                "(or convert the checkpoint to .safetensors elsewhere)."
            ) from error
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a corrupt or non-tensor file: one clear line
            raise ValueError(f"Could not read a torch state dict from {path!r}: {error}") from error
        for key in ("model", "state_dict", "net_state"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
        state = {
            k: v.detach().cpu().double().numpy() if v.is_floating_point() else v.cpu().numpy()
            for k, v in state.items()
            if hasattr(v, "detach")
        }
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _conv_kernel(weight):
    return np.transpose(weight, (2, 3, 1, 0))  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _torchvision_resnet_weights(state, backbone):
    """``{layer name: [arrays]}`` of a torchvision ResNet state dict for our trunk's layers."""
    import keras

    out = {}
    for layer in backbone.layers:
        prefix = layer.name.replace("_", ".") + "."
        # "layer1_0_downsample_0" -> "layer1.0.downsample.0."
        if isinstance(layer, keras.layers.Conv2D):
            out[layer.name] = [(_conv_kernel, prefix + "weight")]
        elif isinstance(layer, keras.layers.BatchNormalization):
            out[layer.name] = [(None, prefix + p) for p in ("weight", "bias", "running_mean", "running_var")]
    return out


def _linear(weight):
    return np.transpose(weight)  # torch Linear (out, in) -> keras Dense (in, out)


def _timm_vit_weights(state, backbone):
    import keras

    from keras_roadmap.models.vit_layers import ClassTokenPositionEmbedding, FusedQKVSelfAttention

    out = {}
    for layer in backbone.layers:
        name = layer.name
        prefix = name.replace("blocks_", "blocks.").replace("_norm", ".norm").replace("_attn", ".attn")
        prefix = prefix.replace("_mlp_fc", ".mlp.fc") + "."
        if name == "patch_embed_proj":
            out[name] = [(_conv_kernel, "patch_embed.proj.weight"), (None, "patch_embed.proj.bias")]
        elif isinstance(layer, ClassTokenPositionEmbedding):
            out[name] = [(None, "cls_token"), (_drop_distillation_position, "pos_embed")]
        elif isinstance(layer, FusedQKVSelfAttention):
            out[name] = [
                (_linear, prefix + "qkv.weight"),
                (None, prefix + "qkv.bias"),
                (_linear, prefix + "proj.weight"),
                (None, prefix + "proj.bias"),
            ]
        elif isinstance(layer, keras.layers.LayerNormalization):
            out[name] = [(None, prefix + "weight"), (None, prefix + "bias")]
        elif isinstance(layer, keras.layers.Dense):
            out[name] = [(_linear, prefix + "weight"), (None, prefix + "bias")]
    return out


def _drop_distillation_position(pos_embed, state=None):
    """The official ROADMAP token removal: a distilled DeiT (with ``dist_token``) has position
    embeddings [class, distillation, patches...]; keep [class, patches...]."""
    if state is not None and "dist_token" in state:
        return np.concatenate([pos_embed[:, :1], pos_embed[:, 2:]], axis=1)
    return pos_embed


_LAYOUTS = {"torchvision_resnet": _torchvision_resnet_weights, "timm_vit": _timm_vit_weights}


def load_state_dict_into(backbone, state: dict, architecture: str) -> dict:
    """Write ``state`` (from :func:`read_state_dict`) into ``backbone`` (our trunk model).

    Args:
        backbone: the ``"backbone"`` model of a "torchvision" ResNet-50 or "timm" DeiT embedder.
        state: ``{checkpoint name: array}``.
        architecture: "torchvision_resnet" or "timm_vit".

    Returns:
        ``{"loaded": n tensors, "ignored": [checkpoint names not used: classifier, dist token]}``.

    Raises:
        ValueError: a trunk weight missing from the checkpoint, a checkpoint tensor of the trunk
        left unused, or a shape that does not fit (e.g. a DeiT built for another image size).
    """
    if architecture not in _LAYOUTS:
        raise ValueError(f"architecture must be one of {sorted(_LAYOUTS)}, got {architecture!r}.")
    plan = _LAYOUTS[architecture](state, backbone)
    missing = sorted(key for entries in plan.values() for _, key in entries if key not in state)
    if missing:
        raise ValueError(
            f"The checkpoint is not a {architecture} state dict of this model: {len(missing)} "
            f"tensors are missing, e.g. {missing[:4]} (it has {sorted(state)[:4]}...)."
        )
    used = {key for entries in plan.values() for _, key in entries}
    ignored = sorted(k for k in state if k not in used)
    unexpected = [
        k for k in ignored if not k.startswith(_IGNORED[architecture]) and not k.endswith("num_batches_tracked")
    ]
    if unexpected:
        raise ValueError(
            f"The checkpoint has {len(unexpected)} tensors this {architecture} trunk has no place "
            f"for, e.g. {unexpected[:4]}: another architecture or depth?"
        )
    loaded = 0
    for layer_name, entries in plan.items():
        layer = backbone.get_layer(layer_name)
        arrays = []
        for transform, key in entries:
            value = state[key]
            if transform is _drop_distillation_position:
                value = transform(value, state)
            elif transform is not None:
                value = transform(value)
            arrays.append(value)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            hint = (
                " (DeiT position embeddings fix the image size: build with the checkpoint's "
                "input_shape, e.g. (224, 224, 3))"
                if layer_name == "embeddings"
                else ""
            )
            raise ValueError(f"Layer {layer_name!r} expects shapes {expected}, the checkpoint gives {got}{hint}.")
        layer.set_weights([a.astype(w.dtype) for a, w in zip(arrays, layer.weights, strict=False)])
        loaded += len(arrays)
    return {"loaded": loaded, "ignored": ignored}


# The official RetrievalNet's ResNet backbone is nn.Sequential(*children[:-2]): its indices.
_SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def split_retrieval_net(state: dict, architecture: str):
    """An official ROADMAP ``RetrievalNet`` state dict -> (trunk state dict in torchvision / timm
    names, ``{"weight", "bias"}`` of its ``fc`` projection or {}). Other state dicts are returned
    unchanged with an empty projection."""
    if not any(k.startswith("backbone.") for k in state):
        return state, {}
    trunk, fc = {}, {}
    for key, value in state.items():
        if key.startswith("fc."):
            fc[key[len("fc.") :]] = value
        elif key.startswith("backbone."):
            key = key[len("backbone.") :]
            if architecture == "torchvision_resnet":
                index, _, rest = key.partition(".")
                if index not in _SEQUENTIAL_RESNET:
                    raise ValueError(f"Unexpected RetrievalNet backbone tensor 'backbone.{key}'.")
                key = f"{_SEQUENTIAL_RESNET[index]}.{rest}"
            trunk[key] = value
        else:
            trunk[key] = value  # reported as unexpected by load_state_dict_into
    return trunk, fc


def load_checkpoint(model, name: str, path) -> dict:
    """Load the checkpoint at ``path`` into ``model.get_layer("backbone")`` of embedder ``name``
    (and, for an official RetrievalNet state dict, its ``fc`` into ``head_projection``).

    Returns the summary of :func:`load_state_dict_into` (plus ``"head": True`` when the
    projection was loaded). Raises ValueError if embedder ``name`` has no checkpoint layout (the
    message lists those that have one) or the projection does not fit the head.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Embedder {name!r} loads no torch/timm checkpoint; those that do: {sorted(ARCHITECTURES)}.")
    architecture = ARCHITECTURES[name]
    trunk, fc = split_retrieval_net(read_state_dict(path), architecture)
    summary = load_state_dict_into(model.get_layer("backbone"), trunk, architecture)
    if fc:
        try:
            head = model.get_layer("head_projection")
        except ValueError:
            raise ValueError(
                f"{path!r} has an fc projection but this {name} embedder has no head_projection (embedding_dim=None?)."
            ) from None
        kernel, bias = _linear(fc["weight"]), fc["bias"]
        if tuple(head.kernel.shape) != kernel.shape:
            raise ValueError(
                f"The checkpoint's fc is {kernel.shape[0]} -> {kernel.shape[1]}, the head is "
                f"{tuple(head.kernel.shape)}: pass embedding_dim={kernel.shape[1]}."
            )
        head.set_weights([kernel.astype(head.kernel.dtype), bias.astype(head.bias.dtype)])
        summary["head"] = True
    return summary
