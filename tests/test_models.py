"""Embedders: registry, shapes, unit norms, float32 output, frozen BatchNorm, weights, errors."""

import keras
import numpy as np
import pytest

from keras_roadmap.losses import ROADMAPLoss
from keras_roadmap.models import (
    HEAD_PREFIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenStatsBatchNormalization,
    ImageNetToCaffe,
    RandomWeightsWarning,
    TokenPooling,
    build_embedder,
    freeze_batchnorm,
    list_embedders,
    register_embedder,
)
from keras_roadmap.optim import build_optimizer

SMALL = (32, 32, 3)


@pytest.fixture
def mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


def _images(n, shape, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def _batchnorm_stats(model):
    return {
        v.path: v.numpy().copy()
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)  # gamma/beta train (paper's freeze)
    }


def _train_one_step(model, images, lr=1e-3):
    """One compiled training step with the ROADMAP loss (2 images per class), paper optimiser."""
    labels = np.arange(len(images)) // 2
    # Eager: one step does not pay for tracing a 12-block graph (x3 faster on 2 CPU cores).
    model.compile(optimizer=build_optimizer(lr, 2 * lr), loss=ROADMAPLoss(), run_eagerly=True)
    return float(model.train_on_batch(images, labels))


def _check_embedder_step(model, images, dim):
    """Shape, unit norm, float32; a train step changes the weights but no BatchNorm statistic."""
    out = np.asarray(model(images))
    assert out.shape == (len(images), dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert model.inputs[0].name == "images"
    before_bn = _batchnorm_stats(model)
    before = [v.numpy().copy() for v in model.trainable_variables]
    loss = _train_one_step(model, images)
    assert np.isfinite(loss)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables, strict=False)]
    assert all(changed), "every trainable variable should move after one Adam step"
    for path, value in _batchnorm_stats(model).items():
        np.testing.assert_array_equal(value, before_bn[path], err_msg=path)


def test_registry_lists_paper_models():
    assert {"resnet50", "resnet50_max_ln", "deit_small", "deit_small_distilled", "deit_base", "tiny_cnn"} <= set(
        list_embedders()
    )


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="Unknown embedder 'resnet49'.*resnet50.*tiny_cnn"):
        build_embedder("resnet49")


def test_register_embedder_adds_a_name_and_refuses_duplicates():
    @register_embedder("test_identity_cnn")
    def _build(*, input_shape, embedding_dim, l2_normalize, freeze_batchnorm, backbone_weights):
        images = keras.Input(input_shape, name="images")
        return keras.Model(images, keras.layers.GlobalAveragePooling2D()(images))

    assert "test_identity_cnn" in list_embedders()
    out = build_embedder("test_identity_cnn", input_shape=(4, 4, 3))(np.ones((1, 4, 4, 3)))
    np.testing.assert_allclose(np.asarray(out), 1.0)
    with pytest.raises(ValueError, match="already registered"):
        register_embedder("test_identity_cnn")(_build)


def test_tiny_cnn_shape_norm_and_parts():
    model = build_embedder("tiny_cnn", input_shape=SMALL, embedding_dim=24)
    out = np.asarray(model(_images(5, SMALL)))
    assert out.shape == (5, 24) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    backbone_ids = {id(v) for v in model.get_layer("backbone").trainable_variables}
    for v in model.trainable_variables:
        assert (id(v) in backbone_ids) != v.path.startswith(HEAD_PREFIX), v.path
    assert any(v.path.startswith(HEAD_PREFIX) for v in model.trainable_variables)


def test_tiny_cnn_without_l2_normalisation_is_not_unit_norm():
    model = build_embedder("tiny_cnn", input_shape=SMALL, l2_normalize=False)
    norms = np.linalg.norm(np.asarray(model(_images(4, SMALL))), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)


def test_output_is_float32_under_mixed_precision(mixed_precision):
    model = build_embedder("tiny_cnn", input_shape=SMALL)
    assert model.get_layer("backbone").compute_dtype == "float16"
    out = model(_images(3, SMALL))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=1), 1.0, atol=1e-5)


def test_frozen_batchnorm_stats_do_not_move_in_a_training_step():
    model = build_embedder("tiny_cnn", input_shape=SMALL)
    _check_embedder_step(model, _images(8, SMALL), 64)


def test_unfrozen_batchnorm_stats_do_move():
    # The counterpart of the test above: without freezing, a step updates the moving statistics.
    model = build_embedder("tiny_cnn", input_shape=SMALL, freeze_batchnorm=False)
    before = _batchnorm_stats(model)
    _train_one_step(model, _images(8, SMALL))
    moved = [p for p, v in _batchnorm_stats(model).items() if not np.array_equal(v, before[p])]
    assert any("moving_mean" in p for p in moved)


def test_freeze_batchnorm_counts_and_rejects_models_without_batchnorm():
    model = build_embedder("tiny_cnn", input_shape=SMALL, freeze_batchnorm=False)
    assert freeze_batchnorm(model) == 3
    x = _images(4, SMALL)  # the function's "statistics" mode: inference-mode normalisation
    np.testing.assert_array_equal(np.asarray(model(x, training=True)), np.asarray(model(x)))
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="no BatchNormalization"):
        freeze_batchnorm(plain)


def test_weights_file_round_trip(tmp_path):
    model = build_embedder("tiny_cnn", input_shape=SMALL, embedding_dim=16)
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    fresh = build_embedder("tiny_cnn", input_shape=SMALL, embedding_dim=16)
    restored = build_embedder("tiny_cnn", input_shape=SMALL, embedding_dim=16, weights=path)
    x = _images(4, SMALL)
    np.testing.assert_array_equal(np.asarray(restored(x)), np.asarray(model(x)))
    assert not np.allclose(np.asarray(fresh(x)), np.asarray(model(x)))
    with pytest.raises(ValueError, match="does not fit embedder 'tiny_cnn'"):
        build_embedder("tiny_cnn", input_shape=SMALL, embedding_dim=32, weights=path)


def test_saved_embedder_reloads_with_frozen_batchnorm(tmp_path):
    model = build_embedder("tiny_cnn", input_shape=SMALL, embedding_dim=16)
    model.save(tmp_path / "tiny.keras")
    loaded = keras.models.load_model(tmp_path / "tiny.keras")
    x = _images(3, SMALL)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    bns = [layer for layer in loaded.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    # The paper's frozen BatchNorm comes back: fixed statistics, trainable gamma/beta.
    assert len(bns) == 3 and all(isinstance(bn, FrozenStatsBatchNormalization) and bn.trainable for bn in bns)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=True)), np.asarray(loaded(x)))
    assert loaded.inputs[0].name == "images"


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_embedder("tiny_cnn", input_shape=SMALL, weights=missing)
    with pytest.raises(FileNotFoundError, match="not found.*no_such_dir"):
        build_embedder("tiny_cnn", input_shape=SMALL, weights=str(tmp_path / "no_such_dir"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_embedder("resnet50", input_shape=SMALL, weights=tmp_path)


def test_other_bad_arguments_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="keras.models.load_model"):
        build_embedder("tiny_cnn", input_shape=SMALL, weights=tmp_path / "model.keras")
    with pytest.raises(TypeError, match="weights must be None"):
        build_embedder("tiny_cnn", input_shape=SMALL, weights=3)
    with pytest.raises(ValueError, match="input_shape must be"):
        build_embedder("tiny_cnn", input_shape=(32, 32))
    with pytest.raises(ValueError, match="embedding_dim must be a positive int"):
        build_embedder("tiny_cnn", input_shape=SMALL, embedding_dim=0)
    with pytest.raises(ValueError, match="divisible by the patch size 16"):
        build_embedder("deit_small", input_shape=(40, 40, 3))
    with pytest.raises(ValueError, match="variant must be one of"):
        build_embedder("resnet50", input_shape=SMALL, variant="v2")
    with pytest.raises(ValueError, match="no pretrained backbone presets"):
        build_embedder("tiny_cnn", input_shape=SMALL, weights="some_preset_name")
    with pytest.raises(ValueError, match="no distillation token"):
        build_embedder("deit_small", input_shape=SMALL, token="cls_dist_mean")
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_embedder("tiny_cnn", input_shape=SMALL, pooling="median")


def test_missing_keras_hub_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # what `import keras_hub` sees when absent
    with pytest.raises(ImportError, match=r"keras-roadmap\[hub\].*variant='keras_applications'"):
        build_embedder("resnet50", input_shape=SMALL, variant="keras_hub")
    with pytest.raises(ImportError, match=r"keras-roadmap\[hub\]"):
        build_embedder("deit_small", input_shape=SMALL, variant="keras_hub")


def test_token_pooling_modes():
    tokens = np.arange(2 * 4 * 3, dtype="float32").reshape(2, 4, 3)
    np.testing.assert_array_equal(TokenPooling("cls")(tokens), tokens[:, 0])
    np.testing.assert_array_equal(TokenPooling("cls_dist_mean")(tokens), (tokens[:, 0] + tokens[:, 1]) / 2)
    np.testing.assert_array_equal(
        TokenPooling("cls_dist_concat")(tokens), np.concatenate([tokens[:, 0], tokens[:, 1]], -1)
    )
    with pytest.raises(ValueError, match="mode must be one of"):
        TokenPooling("avg")


def test_imagenet_to_caffe_matches_keras_caffe_preprocessing():
    rgb255 = np.random.default_rng(0).uniform(0, 255, size=(2, 3, 3, 3)).astype("float32")
    normalised = (rgb255 / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    expected = keras.applications.resnet50.preprocess_input(rgb255.copy())
    np.testing.assert_allclose(np.asarray(ImageNetToCaffe()(normalised.astype("float32"))), expected, atol=1e-3)


# --- the real backbones (weights=None, small images, one step each) -------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "resnet50_max_ln"])
def test_resnet_embedders_train_one_step_with_frozen_batchnorm(name):
    model = build_embedder(name, input_shape=(64, 64, 3), weights="random")
    backbone = model.get_layer("backbone")
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # The paper's freeze: statistics fixed, gamma/beta trained (checked by _check_embedder_step).
    assert len(bns) == 53 and all(isinstance(bn, FrozenStatsBatchNormalization) and bn.trainable for bn in bns)
    if name == "resnet50_max_ln":
        model.get_layer("head_max_pool"), model.get_layer("head_layer_norm")
    else:
        model.get_layer("head_avg_pool")
    _check_embedder_step(model, _images(8, (64, 64, 3)), 512)


@pytest.mark.slow
def test_resnet50_is_v1_5_and_keras_applications_is_v1():
    # v1.5 (torchvision, the paper): the downsampling stride sits on the 3x3 conv.
    hub = build_embedder("resnet50", input_shape=SMALL, variant="keras_hub").get_layer("backbone")
    assert hub.get_layer("stack1_block0_1_conv").strides == (1, 1)
    assert hub.get_layer("stack1_block0_2_conv").strides == (2, 2)
    ours = build_embedder("resnet50", input_shape=SMALL, weights="random").get_layer("backbone")
    assert ours.get_layer("layer2_0_conv1").strides == (1, 1)
    assert ours.get_layer("layer2_0_conv2").strides == (2, 2)
    app = build_embedder("resnet50", input_shape=SMALL, variant="keras_applications")
    app_trunk = app.get_layer("backbone")
    assert app_trunk.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert app_trunk.get_layer("conv3_block1_2_conv").strides == (1, 1)
    out = np.asarray(app(_images(2, SMALL)))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_resnet_backbone_from_a_preset_directory(tmp_path):
    model = build_embedder("resnet50", input_shape=SMALL, variant="keras_hub")
    model.get_layer("backbone").save_to_preset(str(tmp_path / "preset"))
    loaded = build_embedder("resnet50", input_shape=SMALL, weights=tmp_path / "preset")
    for a, b in zip(model.get_layer("backbone").weights, loaded.get_layer("backbone").weights, strict=False):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="holds a ResNetBackbone"):
        build_embedder("deit_small", input_shape=SMALL, weights=tmp_path / "preset")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, kwargs, dim",
    [
        ("deit_small", {}, 384),
        ("deit_small_distilled", {}, 384),
        ("deit_base", {}, 768),
    ],
)
def test_deit_embedders_train_one_step(name, kwargs, dim):
    model = build_embedder(name, input_shape=SMALL, weights="random", **kwargs)
    tokens = model.get_layer("backbone").output_shape
    # The default (timm) variant is class-token-only, the distilled one too (official removal).
    assert tokens[1] == 1 + (32 // 16) ** 2
    _check_embedder_step(model, _images(8, SMALL), dim)


@pytest.mark.slow
def test_distilled_deit_can_concatenate_class_and_distillation_tokens():
    model = build_embedder("deit_small_distilled", input_shape=SMALL, token="cls_dist_concat", variant="keras_hub")
    assert model.get_layer("backbone").output_shape[1] == 2 + (32 // 16) ** 2
    out = np.asarray(model(_images(2, SMALL)))
    assert out.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_deit_backbone_from_a_preset_directory(tmp_path):
    model = build_embedder("deit_small_distilled", input_shape=SMALL, variant="keras_hub")
    model.get_layer("backbone").save_to_preset(str(tmp_path / "deit"))
    loaded = build_embedder("deit_small_distilled", input_shape=SMALL, weights=tmp_path / "deit")
    x = _images(2, SMALL)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    with pytest.raises(ValueError, match=r"pass input_shape=\(32, 32, 3\)"):
        build_embedder("deit_small_distilled", input_shape=(48, 48, 3), weights=tmp_path / "deit")


@pytest.mark.slow
def test_saved_deit_embedder_reloads(tmp_path):
    model = build_embedder("deit_small_distilled", input_shape=SMALL, token="cls_dist_mean", variant="keras_hub")
    model.save(tmp_path / "deit.keras")
    loaded = keras.models.load_model(tmp_path / "deit.keras")
    x = _images(2, SMALL)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    # Our timm-style DeiT (custom attention / token layers) reloads too.
    model = build_embedder("deit_small", input_shape=SMALL, weights="random")
    model.save(tmp_path / "deit.keras")
    loaded = keras.models.load_model(tmp_path / "deit.keras")
    x = _images(2, SMALL)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)


@pytest.mark.slow
def test_real_backbones_output_float32_under_mixed_precision(mixed_precision):
    for name in ("resnet50", "deit_small"):
        out = build_embedder(name, input_shape=SMALL, weights="random")(_images(2, SMALL))
        assert keras.backend.standardize_dtype(out.dtype) == "float32", name


# --- frozen BatchNorm semantics, float64, random-weights warning --------------------------------


def test_frozen_statistics_batchnorm_trains_gamma_beta_but_not_the_statistics():
    model = build_embedder("tiny_cnn", input_shape=SMALL)  # default: the paper's freeze
    bns = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(isinstance(bn, FrozenStatsBatchNormalization) for bn in bns)
    x = _images(8, SMALL)
    # Normalisation uses the moving statistics even in training mode.
    np.testing.assert_array_equal(np.asarray(model(x, training=True)), np.asarray(model(x)))
    gammas = {bn.name: bn.gamma.numpy().copy() for bn in bns}
    trainable = {v.path for v in model.trainable_variables}
    assert all(bn.gamma.path in trainable and bn.beta.path in trainable for bn in bns)
    _check_embedder_step(model, x, 64)  # statistics unchanged, every trainable variable moved
    assert all(not np.array_equal(bn.gamma.numpy(), gammas[bn.name]) for bn in bns)


def test_freeze_all_also_freezes_gamma_and_beta():
    model = build_embedder("tiny_cnn", input_shape=SMALL, freeze_batchnorm="all")
    bns = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 3 and not any(bn.trainable for bn in bns)
    trainable = {v.path for v in model.trainable_variables}
    assert not any(bn.gamma.path in trainable for bn in bns)
    with pytest.raises(ValueError, match="freeze_batchnorm must be"):
        build_embedder("tiny_cnn", input_shape=SMALL, freeze_batchnorm="stats")


@pytest.fixture
def float64():
    previous, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # another test may have set a float32 policy
    yield
    keras.config.set_floatx(previous)
    keras.config.set_dtype_policy(policy)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_cnn", "resnet50", "deit_small"])
def test_embedders_compute_in_float64_under_float64_floatx(float64, name):
    model = build_embedder(name, input_shape=SMALL, weights="random")
    assert {v.dtype for v in model.weights} == {"float64"}
    x = _images(2, SMALL).astype("float64")
    out = model(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    # Really float64 inside: the unit norm holds to float64 precision.
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=1), 1.0, atol=1e-13)
    assert all(keras.backend.standardize_dtype(t.dtype) == "float64" for t in [model.get_layer("backbone")(x)])


def test_paper_backbones_warn_about_random_weights():
    with pytest.warns(RandomWeightsWarning, match="deit_small_patch16_224-cd65a155.pth"):
        build_embedder("deit_small", input_shape=SMALL)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        build_embedder("deit_small", input_shape=SMALL, weights="random")
        build_embedder("tiny_cnn", input_shape=SMALL)  # no pretrained checkpoint: no warning
