"""Parity with the official PyTorch ROADMAP code on every public fixture (values and gradients).

Gradients are taken with tf.GradientTape through the public Keras loss objects.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import fixtures_dir, load_fixture

from keras_roadmap import CalibrationLoss, ROADMAPLoss, SmoothAPLoss, SupAPLoss, heaviside_average_precision

LOSS_FIXTURES = sorted(p.name for p in fixtures_dir().glob("loss_*.npz"))
BATCH_FIXTURES = [n for n in LOSS_FIXTURES if not n.startswith("loss_mem_") and "nopos_mem" not in n]
MEMORY_FIXTURES = [n for n in LOSS_FIXTURES if n.startswith("loss_mem_") or "nopos_mem" in n]


def test_every_fixture_is_covered():
    assert len(LOSS_FIXTURES) == 26
    assert len(BATCH_FIXTURES) + len(MEMORY_FIXTURES) == 26


def tolerances(z):
    if z["emb"].dtype == np.float64:
        return {"rtol": 1e-5, "atol": 1e-9}
    return {"rtol": 1e-3, "atol": 1e-6}


def build_losses(z):
    dtype = str(z["emb"].dtype)
    supap = SupAPLoss(
        tau=float(z["supap_tau"]),
        rho=float(z["supap_rho"]),
        delta=float(z["supap_delta"]),
        start=float(z["supap_start"]),
        offset=float(z["supap_offset"]),
        dtype=dtype,
    )
    smoothap = SmoothAPLoss(tau=float(z["smoothap_tau"]), dtype=dtype)
    calibration = CalibrationLoss(float(z["calib_pos_margin"]), float(z["calib_neg_margin"]), dtype=dtype)
    roadmap = ROADMAPLoss(
        **{k: v for k, v in supap.get_config().items() if k in ("tau", "rho", "delta", "start", "offset")},
        pos_margin=calibration.pos_margin,
        neg_margin=calibration.neg_margin,
        ap_weight=float(z["weight_supap"]),
        calibration_weight=float(z["weight_calibration"]),
        dtype=dtype,
    )
    return {"supap": supap, "smoothap": smoothap, "calib": calibration, "roadmap": roadmap}


def value_and_grad(fn, emb):
    x = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return value.numpy(), tape.gradient(value, x).numpy()


def assert_close(actual, expected, tol, what):
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol)


@pytest.mark.parametrize("name", BATCH_FIXTURES)
def test_batch_losses_match_official(name):
    z = load_fixture(name)
    tol = tolerances(z)
    losses = build_losses(z)
    labels, emb = z["labels"], z["emb"]
    for key in ("supap", "smoothap", "calib"):
        value, grad = value_and_grad(lambda x, key=key: losses[key](labels, x), emb)
        assert_close(value, z[f"{key}_loss"], tol, f"{name}: {key} loss")
        assert_close(grad, z[f"grad_{key}"], tol, f"{name}: {key} gradient")
    value, grad = value_and_grad(lambda x: losses["roadmap"](labels, x), emb)
    assert_close(value, z["total_loss"], tol, f"{name}: ROADMAP total")
    assert_close(grad, z["grad_total"], tol, f"{name}: ROADMAP gradient")


@pytest.mark.parametrize("name", BATCH_FIXTURES)
def test_batch_per_query_ap_matches_official(name):
    z = load_fixture(name)
    tol = tolerances(z)
    losses = build_losses(z)
    dtype = str(z["emb"].dtype)
    assert_close(losses["supap"].average_precision(z["labels"], z["emb"]).numpy(), z["supap_ap"], tol, "supap_ap")
    assert_close(
        losses["smoothap"].average_precision(z["labels"], z["emb"]).numpy(), z["smoothap_ap"], tol, "smoothap_ap"
    )
    exact = heaviside_average_precision(z["labels"], z["emb"], dtype=dtype).numpy()
    assert_close(exact, z["heaviside_ap"], tol, "heaviside_ap")


@pytest.mark.parametrize("name", BATCH_FIXTURES)
def test_textbook_ap_excluding_self(name):
    z = load_fixture(name)
    exact = heaviside_average_precision(z["labels"], z["emb"], include_self=False, dtype="float64").numpy()
    ref = z["ref_ap_exact_excl_self"]
    np.testing.assert_array_equal(np.isnan(exact), np.isnan(ref))
    np.testing.assert_allclose(exact[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", MEMORY_FIXTURES)
def test_memory_losses_match_official(name):
    z = load_fixture(name)
    tol = tolerances(z)
    losses = build_losses(z)
    labels, emb, mem_labels, mem_emb = z["labels"], z["emb"], z["mem_labels"], z["mem_emb"]
    has_pos = z["mem_pos_count"] > 0
    for key in ("supap", "smoothap", "calib"):
        value, grad = value_and_grad(
            lambda x, key=key: losses[key].call_with_reference(labels, x, mem_labels, mem_emb), emb
        )
        assert np.isfinite(value), f"{name}: {key} memory loss must be finite"
        expected = z[f"mem_{key}_loss"]
        if key != "calib" and not has_pos.all():
            # The official loss is NaN; ours leaves the queries without positive out of the mean.
            assert np.isnan(expected)
            expected = 1.0 - np.mean(z[f"mem_{key}_ap"][has_pos])
            # Queries without positive contribute no gradient in the official code either.
            grad_expected = z[f"grad_mem_{key}"] * has_pos.size / has_pos.sum()
        else:
            grad_expected = z[f"grad_mem_{key}"]
        assert_close(value, expected, tol, f"{name}: memory {key} loss")
        assert_close(grad, grad_expected, tol, f"{name}: memory {key} gradient")
    for key in ("supap", "smoothap"):
        ap = losses[key].average_precision(labels, emb, mem_labels, mem_emb).numpy()
        np.testing.assert_array_equal(np.isnan(ap), ~has_pos)
        assert_close(ap[has_pos], z[f"mem_{key}_ap"][has_pos], tol, f"{name}: mem_{key}_ap")
    exact = heaviside_average_precision(labels, emb, mem_labels, mem_emb, dtype=str(emb.dtype)).numpy()
    assert_close(exact[has_pos], z["mem_heaviside_ap"][has_pos], tol, f"{name}: mem_heaviside_ap")


@pytest.mark.parametrize("name", [n for n in MEMORY_FIXTURES if "nopos" not in n])
def test_memory_total_matches_official(name):
    """Batch terms + memory terms, as the official training step adds them."""
    z = load_fixture(name)
    roadmap = build_losses(z)["roadmap"]
    labels, mem_labels, mem_emb = z["labels"], z["mem_labels"], z["mem_emb"]
    weight = float(z["weight_memory"])

    def total(x):
        return roadmap(labels, x) + weight * roadmap.call_with_reference(labels, x, mem_labels, mem_emb)

    value, grad = value_and_grad(total, z["emb"])
    tol = tolerances(z)
    assert_close(value, z["total_loss"], tol, "total")
    assert_close(grad, z["grad_total"], tol, "grad_total")
