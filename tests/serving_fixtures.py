"""Small ONNX embedders and galleries for the index-folder and HTTP-server tests."""

import numpy as np
from PIL import Image


def export_embedder(path, dim=16, image_size=32, seed=4):
    """A tiny conv embedder (any input size) exported to ONNX with its preprocessing baked in."""
    import keras

    from keras_roadmap import export as ex

    keras.utils.set_random_seed(seed)
    x = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(x)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    ex.to_onnx(
        keras.Model(x, keras.layers.Dense(dim)(h)), path, with_preprocessing=True, preset="sop", image_size=image_size
    )
    return path


def write_image(path, i, size=(48, 64)):
    """A JPEG with a pattern and colour of its own (index ``i``)."""
    rng = np.random.default_rng(i)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    pattern = (np.sin(xx * (1 + i) / 7.0 + i) * np.cos(yy * (9 - i % 9) / 9.0) + 1) * 100
    pixels = np.clip(base[None, None, :] * 0.6 + pattern[..., None] * (i % 3 + 1) / 3, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    return path


def write_gallery(root, n=9, classes=3):
    """``root/class_<c>/img_<i>.jpg`` for i < n; returns the paths."""
    sizes = [(48, 64), (64, 48), (40, 40)]
    return [write_image(root / f"class_{i % classes}" / f"img_{i}.jpg", i, sizes[i % len(sizes)]) for i in range(n)]


def with_contract(src, dst, **preprocessing):
    """A copy of ONNX embedder ``src`` whose serving contract states other preprocessing values
    (e.g. ``image_size=24``): an embedder trained for another input, as far as an index can tell."""
    import json

    import onnx

    from keras_roadmap.serving import CONTRACT_KEY

    model = onnx.load(str(src))
    entry = next(p for p in model.metadata_props if p.key == CONTRACT_KEY)
    contract = json.loads(entry.value)
    contract["preprocessing"].update(preprocessing)
    entry.value = json.dumps(contract)
    onnx.save(model, str(dst))
    return dst


def with_projection(src, dst, dim=5, seed=0):
    """ONNX embedder ``src`` followed by a random ``D -> dim`` projection (contract updated)."""
    import json

    import onnx
    from onnx import helper, numpy_helper

    from keras_roadmap.serving import CONTRACT_KEY

    model = onnx.load(str(src))
    graph = model.graph
    out = graph.output[0]
    width = out.type.tensor_type.shape.dim[1].dim_value
    for node in graph.node:
        node.output[:] = [name + "_full" if name == out.name else name for name in node.output]
    weight = np.random.default_rng(seed).normal(size=(width, dim)).astype(np.float32)
    graph.initializer.append(numpy_helper.from_array(weight, "projection_weight"))
    graph.node.append(helper.make_node("MatMul", [out.name + "_full", "projection_weight"], [out.name]))
    out.type.tensor_type.shape.dim[1].dim_value = dim
    entry = next(p for p in model.metadata_props if p.key == CONTRACT_KEY)
    contract = json.loads(entry.value)
    contract["output_dim"] = dim
    entry.value = json.dumps(contract)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst
