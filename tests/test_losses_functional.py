"""The functional forms (roadmap, supap, smooth_ap, calibration) against the classes, the one
definition of the SupAP / calibration parameters and presets, and the public loss protocol."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap import losses
from keras_roadmap.losses import (
    CALIBRATION_DEFAULTS,
    SUPAP_DEFAULTS,
    SUPAP_PRESETS,
    CalibrationLoss,
    RetrievalLoss,
    ROADMAPLoss,
    SmoothAPLoss,
    SupAPLoss,
    calibration,
    roadmap,
    smooth_ap,
    supap,
)

PAIRS = [(ROADMAPLoss, roadmap), (SupAPLoss, supap), (SmoothAPLoss, smooth_ap), (CalibrationLoss, calibration)]
# Non-default parameters for each loss, so that a parameter the function forgot would show.
PARAMS = {
    ROADMAPLoss: {
        "tau": 0.05,
        "rho": 20.0,
        "delta": 0.1,
        "start": 0.2,
        "offset": 1.1,
        "pos_margin": 0.8,
        "neg_margin": 0.3,
        "ap_weight": 0.7,
        "calibration_weight": 2.0,
    },
    SupAPLoss: {"tau": 0.05, "rho": 20.0, "delta": 0.1, "start": 0.2, "offset": 1.1},
    SmoothAPLoss: {"tau": 0.05},
    CalibrationLoss: {"pos_margin": 0.8, "neg_margin": 0.3},
}


def batch(n=24, dim=6, classes=7, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype("int64")
    emb = rng.normal(size=(n, dim))
    return labels, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def value_and_grad(fn, emb):
    x = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return float(value), tape.gradient(value, x).numpy()


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("cls,fn", PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_batch_form_equals_the_class(cls, fn, include_self):
    labels, emb = batch()
    kwargs = {**PARAMS[cls], "include_self": include_self}
    expected, expected_grad = value_and_grad(lambda x: cls(**kwargs, dtype="float64")(labels, x), emb)
    got, grad = value_and_grad(lambda x: fn(labels, x, **kwargs, dtype="float64"), emb)
    assert got == pytest.approx(expected, rel=1e-12) and expected > 0
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cls,fn", PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_reference_form_equals_call_with_reference(cls, fn):
    labels, emb = batch(seed=1)
    ref_labels, ref_emb = batch(n=40, seed=2)
    ref_labels[:8] = labels[:8]
    self_index = np.full(len(labels), -1, "int32")
    self_index[:8] = np.arange(8)
    ref_emb[:8] = emb[:8]
    ref_mask = np.arange(40) < 33
    options = {"self_index": self_index, "ref_mask": ref_mask}
    kwargs = {**PARAMS[cls], "include_self": False}
    loss = cls(**kwargs, dtype="float64")
    expected, expected_grad = value_and_grad(
        lambda x: loss.call_with_reference(labels, x, ref_labels, ref_emb, **options), emb
    )
    got, grad = value_and_grad(lambda x: fn(labels, x, ref_labels, ref_emb, **kwargs, **options, dtype="float64"), emb)
    assert got == pytest.approx(expected, rel=1e-12) and expected > 0
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cls,fn", PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_functions_compile_with_xla_and_default_to_floatx(cls, fn):
    labels, emb = batch()
    emb = emb.astype("float32")
    compiled = tf.function(lambda y, x: fn(y, x), jit_compile=True)
    value = compiled(tf.constant(labels), tf.constant(emb))
    assert value.dtype == tf.float32
    np.testing.assert_allclose(float(value), float(cls()(labels, emb)), rtol=1e-5)


@pytest.mark.parametrize("fn", [roadmap, supap, smooth_ap, calibration])
def test_functions_are_documented_keras_style(fn):
    doc = inspect.getdoc(fn)
    assert "Formula:" in doc and "```python" in doc and "Returns:" in doc
    assert fn.__name__ in losses.__all__ and getattr(losses, fn.__name__) is fn


def test_functions_reject_bad_input_clearly():
    labels, emb = batch()
    with pytest.raises(ValueError, match="ref_y_true was given without ref_y_pred"):
        supap(labels, emb, ref_y_true=labels)
    with pytest.raises(ValueError, match="`tau` must be > 0"):
        smooth_ap(labels, emb, tau=0.0)
    with pytest.raises(ValueError, match="`tau` must be > 0"):
        roadmap(labels, emb, tau=-1.0)
    with pytest.raises(ValueError, match="integer class ids"):
        calibration(labels.astype("float32"), emb)
    with pytest.raises(TypeError, match=r"roadmap\(\): got an unexpected keyword argument 'gamma'"):
        roadmap(labels, emb, gamma=2.0)


# --- The parameters and presets are defined once ---------------------------------------------


def _positional(callable_):
    return [
        (p.name, p.default)
        for p in inspect.signature(callable_).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("y_true", "y_pred", "ref_y_true", "ref_y_pred")
    ]


def test_signatures_come_from_the_parameter_tables():
    supap_params, margins = list(SUPAP_DEFAULTS.items()), list(CALIBRATION_DEFAULTS.items())
    weights = [("ap_weight", 1.0), ("calibration_weight", 1.0)]
    assert _positional(SupAPLoss) == _positional(supap) == supap_params
    assert _positional(CalibrationLoss) == _positional(calibration) == margins
    assert _positional(ROADMAPLoss) == _positional(roadmap) == supap_params + margins + weights
    # Positional calls keep the documented order.
    config = ROADMAPLoss(0.02, 50.0, 0.04, 0.3, 1.2, 0.85, 0.55, 0.5, 3.0).get_config()
    assert [config[name] for name, _ in supap_params + margins + weights] == [
        0.02,
        50.0,
        0.04,
        0.3,
        1.2,
        0.85,
        0.55,
        0.5,
        3.0,
    ]


def test_configs_come_from_the_parameter_tables():
    for cls, table in ((SupAPLoss, SUPAP_DEFAULTS), (CalibrationLoss, CALIBRATION_DEFAULTS)):
        assert {k: cls().get_config()[k] for k in table} == table
    config = ROADMAPLoss().get_config()
    assert {k: config[k] for k in {**SUPAP_DEFAULTS, **CALIBRATION_DEFAULTS}} == {
        **SUPAP_DEFAULTS,
        **CALIBRATION_DEFAULTS,
    }


def test_presets_are_defined_once():
    from keras_roadmap.recipes.config import LOSS_PRESETS

    assert set(LOSS_PRESETS) == set(SUPAP_PRESETS)  # the recipe schema lists the same names
    assert losses.INATURALIST_SUPAP == SUPAP_PRESETS["inaturalist"] == {"start": 0.0, "offset": 1.0}
    for cls in (SupAPLoss, ROADMAPLoss):
        assert cls.from_preset("inaturalist").get_config() == cls.inaturalist().get_config()
        assert cls.from_preset("default").get_config() == cls().get_config()
        assert cls.from_preset("inaturalist", tau=0.02).get_config()["tau"] == 0.02
    with pytest.raises(ValueError, match=r"Unknown SupAP preset 'inat'; choose one of \['default', 'inaturalist'\]"):
        ROADMAPLoss.from_preset("inat")


def test_recipe_loss_follows_the_preset():
    import types

    from keras_roadmap.recipes import assembly

    loss = assembly.build_loss(types.SimpleNamespace(loss={"preset": "inaturalist", "ap_weight": 0.5}))
    assert loss.get_config() == ROADMAPLoss(start=0.0, offset=1.0, ap_weight=0.5).get_config()


# --- The public protocol ----------------------------------------------------------------------


def test_a_loss_written_against_the_old_private_names_still_works():
    class Legacy(RetrievalLoss):
        def _ratio_terms(self, pairs):
            return [
                (1.0, keras.ops.sum(pairs.scores), keras.ops.cast(keras.ops.size(pairs.scores), pairs.scores.dtype))
            ]

    labels, emb = batch()
    expected = float(np.mean(emb @ emb.T))
    assert float(Legacy(dtype="float64")(labels, emb)) == pytest.approx(expected, rel=1e-12)
    pairs = Legacy().batch_pairs(labels, emb)
    assert len(Legacy().ratio_terms(pairs)) == 1


def test_roadmap_terms_are_the_weighted_union_of_its_parts():
    labels, emb = batch()
    loss = ROADMAPLoss(ap_weight=0.5, calibration_weight=2.0, dtype="float64")
    pairs = loss.batch_pairs(labels, emb)
    terms = loss.ratio_terms(pairs)
    parts = SupAPLoss(dtype="float64").ratio_terms(pairs) + CalibrationLoss(dtype="float64").ratio_terms(pairs)
    assert [w for w, _, _ in terms] == [0.5, 2.0, 2.0]
    for (_, n, c), (_, n2, c2) in zip(terms, parts, strict=False):
        assert float(n) == pytest.approx(float(n2)) and float(c) == float(c2)
    assert ROADMAPLoss(calibration_weight=0.0).ratio_terms(pairs)[0][0] == 1.0
    assert len(ROADMAPLoss(calibration_weight=0.0).ratio_terms(pairs)) == 1
