"""Each private Keras API of ``keras_roadmap._keras_compat`` still means what we rely on.

A Keras release that renames or changes one of them fails here, with the internal's name,
rather than deep inside training.
"""

import json
import pathlib
import subprocess
import sys

import keras
import numpy as np

from keras_roadmap import _keras_compat

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_in_symbolic_scope_follows_the_public_symbolic_scope():
    assert _keras_compat.in_symbolic_scope() is False
    with keras.SymbolicScope():
        assert _keras_compat.in_symbolic_scope() is True, "keras.src.backend.in_symbolic_scope changed"
    assert _keras_compat.in_symbolic_scope() is False


class _Wrapper(keras.layers.Layer):
    """A layer holding a layer: only the private recursive walk sees the inner one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.BatchNormalization(name="inner_bn")

    def call(self, x):
        return self.inner(x)


def test_nested_layers_walks_nested_models_and_layers_of_layers():
    block = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="block_dense")], name="block")
    inputs = keras.Input((4,))
    outputs = _Wrapper(name="wrapper")(block(inputs))
    model = keras.Model(inputs, outputs, name="outer")
    names = [layer.name for layer in _keras_compat.nested_layers(model)]
    assert "outer" not in names, "Layer._flatten_layers(include_self=False) changed"
    assert {"block", "block_dense", "wrapper", "inner_bn"} <= set(names), f"Layer._flatten_layers changed: {names}"


def test_regularization_losses_are_the_weight_penalties_only():
    layer = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(0.5), activity_regularizer="l2")
    layer.build((None, 3))
    kernel = np.arange(6, dtype="float32").reshape(3, 2) / 10
    layer.set_weights([kernel, np.zeros(2, "float32")])
    layer(np.ones((1, 3), "float32"))  # adds an activity loss, which must not be listed
    penalties = _keras_compat.regularization_losses(layer)
    assert len(penalties) == 1, "Layer._get_regularization_losses changed"
    np.testing.assert_allclose(float(penalties[0]), 0.5 * float(np.sum(kernel**2)), rtol=1e-6)


def test_optimizer_variable_index_and_weight_decay_exclusion():
    variables = [keras.Variable(np.zeros(2), name=name) for name in ("kernel", "bias", "gamma")]
    optimizer = keras.optimizers.SGD(weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.build(variables)
    assert [_keras_compat.variable_index(optimizer, v) for v in variables] == [0, 1, 2], (
        "Optimizer._get_variable_index changed"
    )
    assert [_keras_compat.uses_weight_decay(optimizer, v) for v in variables] == [True, False, True], (
        "Optimizer._use_weight_decay changed"
    )


def test_backup_and_restore_file_names(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    backup = tmp_path / "backup"
    model.fit(
        np.ones((4, 3)),
        np.ones((4, 1)),
        epochs=2,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)],
    )
    assert _keras_compat.backup_weights_path(backup).is_file(), (
        f"BackupAndRestore wrote {sorted(p.name for p in backup.iterdir())}"
    )
    metadata = json.loads(_keras_compat.backup_metadata_path(backup).read_text())
    assert metadata["epoch"] == 2, f"BackupAndRestore metadata changed: {metadata}"


def test_no_private_keras_api_outside_the_compat_module():
    # `keras.src` imports and the private Keras methods we know of, anywhere in the package.
    private = (
        "keras.src",
        "._flatten_layers",
        "._get_regularization_losses",
        "._get_variable_index",
        "._use_weight_decay",
        "latest.weights.h5",
        "training_metadata.json",
    )
    offenders = []
    for path in sorted((REPO / "keras_roadmap").rglob("*.py")):
        if path.name == "_keras_compat.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(REPO)}: {name}" for name in private if name in text]
    assert not offenders, offenders


def test_the_package_has_no_import_cycle():
    # Every keras_roadmap module imported alone, in a fresh interpreter, with a graph of the
    # imports its code names (module level and inside functions): no module reaches itself.
    code = r"""
import ast, pathlib, sys
root = pathlib.Path(sys.argv[1])
modules = {}
for path in (root / "keras_roadmap").rglob("*.py"):
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    modules[name.removesuffix(".__init__")] = path
graph = {}
for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        elif isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
    graph[name] = {t for t in targets if t in modules and t != name}
def cycle_from(start):
    stack, seen = [(start, [start])], set()
    while stack:
        node, trail = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return trail + [start]
            if nxt not in seen and nxt != "keras_roadmap":  # the lazy export table, not code
                seen.add(nxt)
                stack.append((nxt, trail + [nxt]))
    return None
found = [c for c in map(cycle_from, sorted(graph)) if c]
print(found[0] if found else "none")
"""
    result = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "none", result.stdout


def test_searchsorted_with_a_length_known_only_at_run_time():
    # Inside `fit` the batch size is dynamic; Keras < 3.12's TensorFlow backend failed there.
    import tensorflow as tf

    sorted_sequence = np.array([0, 2, 2, 5, 7], "int32")
    values = np.array([2, 3, 9, -1, 7], "int32")
    spec = tf.TensorSpec([None], tf.int32)
    for side in ("left", "right"):
        search = tf.function(
            lambda s, v, side=side: _keras_compat.searchsorted(s, v, side=side), input_signature=[spec, spec]
        )
        found = np.asarray(search(sorted_sequence, values))
        np.testing.assert_array_equal(found, np.searchsorted(sorted_sequence, values, side=side), err_msg=side)
