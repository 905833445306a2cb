"""Write the float64 parity fixtures of the SupRank losses from the official code.

Usage (the official code is imported from a mirror, never copied into this repository)::

    python tests/data/official_suprank/make_fixtures.py MIRROR [--out tests/data/official_suprank]

``MIRROR`` is a checkout of ``github.com/elias-ramzi/SupRank`` or its bare git directory (then
its ``HEAD`` is exported to a temporary folder). Needs ``torch`` and ``pytorch-metric-learning``
(the official CalibrationLoss); tested with torch 2.14.1 and pytorch-metric-learning 2.9.0.

Shims (this script's only changes to the official behaviour, all listed in README.md):

* ``suprank/__init__.py`` and ``suprank/lib/__init__.py`` import the whole training stack (hydra,
  faiss, ...): the packages are stubbed, and only the loss files and
  ``suprank/lib/create_label_matrix.py`` are loaded.
* ``log2p`` of ``differentiable_rank.py`` computes in float64: the official ideal DCG ranks come
  from ``argsort(...).float()`` (float32); their values are integers, so only the logarithm's
  precision changes.
* Queries of uneven classes (where SupRecall's batch path reshapes ranks to ``B x |P|`` and
  fails) and reference sets with queries that have no positive are computed one query at a time
  by the official loss, with the batch as its reference (gradients flow into both sides, as in
  the batch form), and averaged over the queries that have a positive. A single query is
  passed twice (``create_label_matrix`` squeezes a one-row batch away); the mean is the same.
"""

import argparse
import importlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SUPAP = {"tau": 0.01, "rho": 100.0, "delta": 0.05, "start": 0.5, "offset": 1.44}
SUPAP_INAT = {**SUPAP, "start": 0.0, "offset": 1.0}


def source_tree(mirror):
    """(folder holding ``suprank/``, commit hash) of the mirror."""
    if os.path.isdir(os.path.join(mirror, "suprank")):
        commit = subprocess.run(
            ["git", "-C", mirror, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        return mirror, commit or "unknown"
    commit = subprocess.run(
        ["git", "--git-dir", mirror, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "--git-dir", mirror, "archive", "HEAD", "suprank"], capture_output=True, check=True
    ).stdout
    folder = tempfile.mkdtemp(prefix="suprank_")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder)
    return folder, commit


def load_official(root):
    """The official loss modules, with the package ``__init__`` files stubbed (see the docstring)."""

    def package(name, path):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
        return module

    suprank = package("suprank", os.path.join(root, "suprank"))
    lib = package("suprank.lib", os.path.join(root, "suprank", "lib"))
    suprank.lib = lib
    spec = importlib.util.spec_from_file_location(
        "suprank.lib.create_label_matrix", os.path.join(root, "suprank", "lib", "create_label_matrix.py")
    )
    clm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clm)
    lib.create_label_matrix = clm.create_label_matrix
    suprank.losses = package("suprank.losses", os.path.join(root, "suprank", "losses"))
    rank_module = importlib.import_module("suprank.losses.tools.differentiable_rank")
    rank_module.log2p = lambda tens: torch.log2(1 + tens.double())  # float64 ideal DCG (see docstring)
    ranking = importlib.import_module("suprank.losses.ranking_loss")
    cluster = importlib.import_module("suprank.losses.cluster_loss")
    calibration = importlib.import_module("suprank.losses.calibration_loss")
    return ranking, cluster, calibration


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tied_rows(rng, labels, d, nonzeros=4):
    """Rows with ``nonzeros`` entries equal to +-1/sqrt(nonzeros): unit norm, and every dot
    product an exact multiple of 1/nonzeros whatever the matmul order, so ties are exact (a
    rounding-level tie would fall on either side of SupAP's jump at t = 0). Class members are
    their class pattern with one sign flipped at random; some rows are exact copies of others."""
    value = 1.0 / np.sqrt(nonzeros)
    patterns = {}
    x = np.zeros((len(labels), d))
    for row, label in enumerate(labels):
        if label not in patterns:
            pattern = np.zeros(d)
            pattern[rng.choice(d, size=nonzeros, replace=False)] = rng.choice([-value, value], size=nonzeros)
            patterns[label] = pattern
        x[row] = patterns[label]
        if rng.random() < 0.5:
            flip = rng.choice(np.flatnonzero(x[row]))
            x[row, flip] = -x[row, flip]
    for _ in range(max(2, len(labels) // 6)):
        i, j = rng.choice(len(labels), size=2, replace=False)
        x[j] = x[i]
    return x


def equal_classes(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


class Official:
    def __init__(self, ranking, cluster, calibration):
        self.ranking, self.cluster, self.calibration = ranking, cluster, calibration

    def recall(self, supap, at_k, temp=1.0):
        return self.ranking.SupRecallLoss(at_k=list(at_k), temp=temp, hierarchy_level=0, **supap)

    def ndcg(self, supap):
        return self.ranking.SupNDCGLoss(hierarchy_level="MULTI", **supap)

    def supap(self, supap):
        return self.ranking.SupAPLoss(hierarchy_level=0, **supap)

    def calib(self):
        return self.calibration.CalibrationLoss(hierarchy_level=0, pos_margin=0.9, neg_margin=0.6)


def _call(crit, emb, lab, ref_emb=None, ref_lab=None):
    if emb.shape[0] == 1:
        # create_label_matrix squeezes a single query's row away: rank it twice (same mean).
        emb, lab = emb.repeat(2, 1), lab.repeat(2, 1)
    return crit(emb, lab, relevance_fn=lambda t: t, ref_embeddings=ref_emb, ref_labels=ref_lab).mean()


def batch_value(crit, x, labels, per_query):
    """Official loss of the batch form and its gradient; ``per_query``: one query at a time,
    the whole batch as reference (the per-query meaning of the batch form)."""
    emb = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor(labels, dtype=torch.int64).view(-1, 1)
    if per_query:
        value = sum(_call(crit, emb[q : q + 1], lab[q : q + 1], emb, lab) for q in range(len(x))) / len(x)
    else:
        value = _call(crit, emb, lab)
    value.backward()
    return float(value.detach()), emb.grad.numpy().copy()


def reference_value(crit, x, labels, ref_x, ref_labels):
    """Official loss of queries against a constant reference, averaged over the queries that
    have a positive there (one query at a time), and the gradient w.r.t. the queries."""
    emb = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor(labels, dtype=torch.int64).view(-1, 1)
    ref = torch.tensor(ref_x, dtype=torch.float64)
    ref_lab = torch.tensor(ref_labels, dtype=torch.int64).view(-1, 1)
    valid = [q for q in range(len(x)) if np.any(ref_labels == labels[q])]
    value = sum(_call(crit, emb[q : q + 1], lab[q : q + 1], ref, ref_lab) for q in valid) / len(valid)
    value.backward()
    return float(value.detach()), emb.grad.numpy().copy()


def cluster_value(official, x, labels, proxies, temperature=0.05):
    emb = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    crit = official.cluster.ClusterLoss(
        embedding_size=x.shape[1], num_classes=proxies.shape[0], temperature=temperature
    ).double()
    with torch.no_grad():
        crit.weight.copy_(torch.tensor(proxies))
    value = crit(emb, torch.tensor(labels, dtype=torch.int64))
    value.backward()
    return value.detach(), emb.grad.numpy().copy(), crit.weight.grad.numpy().copy()


def make_case(official, name, labels, d, seed, *, ties=False, reference=None):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    x = tied_rows(rng, labels, d) if ties else unit_rows(rng, len(labels), d)
    out = {"embeddings": x, "labels": labels}
    sizes = np.bincount(labels)
    uneven = len(set(sizes[sizes > 0])) > 1
    if reference is not None:
        ref_labels = np.asarray(reference, dtype=np.int64)
        ref_x = unit_rows(rng, len(ref_labels), d)
        out.update(ref_embeddings=ref_x, ref_labels=ref_labels)
        for key, crit in (
            ("suprecall", official.recall(SUPAP, (1, 2, 4, 8, 16))),
            ("supndcg", official.ndcg(SUPAP)),
            ("supap", official.supap(SUPAP)),
        ):
            out[f"{key}_value"], out[f"{key}_grad"] = reference_value(crit, x, labels, ref_x, ref_labels)
        return out
    for key, crit, per_query in (
        ("suprecall", official.recall(SUPAP, (1, 2, 4, 8, 16)), uneven),
        ("suprecall_at10", official.recall(SUPAP, (10,)), uneven),
        ("suprecall_inat", official.recall(SUPAP_INAT, (1, 2, 4, 8, 16)), uneven),
        ("supndcg", official.ndcg(SUPAP), False),
        ("supndcg_inat", official.ndcg(SUPAP_INAT), False),
        ("supap", official.supap(SUPAP), False),
        ("calibration", official.calib(), False),
    ):
        out[f"{key}_value"], out[f"{key}_grad"] = batch_value(crit, x, labels, per_query)
        if key.startswith("suprecall") and not per_query:
            # Where the official batch path runs, the per-query meaning used for uneven classes
            # gives the same value and gradient.
            value, grad = batch_value(crit, x, labels, True)
            assert np.isclose(value, out[f"{key}_value"], rtol=1e-12, atol=0), (name, key)
            assert np.allclose(grad, out[f"{key}_grad"], rtol=1e-10, atol=1e-14), (name, key)
    num_classes = int(labels.max()) + 1
    proxies = rng.uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), size=(num_classes, d))
    value, grad, proxy_grad = cluster_value(official, x, labels, proxies)
    out.update(proxies=proxies, cluster_value=float(value), cluster_grad=grad, cluster_proxy_grad=proxy_grad)
    # The official combinations (suprank/engine/base_training_loop.py: sum of weight * loss).
    # ROADMAP_pp_SOP.yaml: weight [0.9, 0.1]; ROADRatk_SOP.yaml: weight empty -> 1 / 2 each.
    out["roadmap_pp_value"] = 0.9 * out["supap_value"] + 0.1 * out["cluster_value"]
    out["roadmap_pp_grad"] = 0.9 * out["supap_grad"] + 0.1 * out["cluster_grad"]
    out["roadmap_pp_proxy_grad"] = 0.1 * proxy_grad
    out["suprecall_calibration_value"] = 0.5 * out["suprecall_value"] + 0.5 * out["calibration_value"]
    out["suprecall_calibration_grad"] = 0.5 * out["suprecall_grad"] + 0.5 * out["calibration_grad"]
    return out


def graded_value(crit, x, levels, ref_x=None, ref_levels=None):
    """The official SupNDCG with ``hierarchy_level: MULTI`` on coarse-to-fine ``levels`` (B, L):
    the official code takes them fine first, and its label matrix counts the equal columns."""
    emb = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor(np.ascontiguousarray(levels[:, ::-1]), dtype=torch.int64)
    ref = ref_lab = None
    if ref_x is not None:
        ref = torch.tensor(ref_x, dtype=torch.float64)
        ref_lab = torch.tensor(np.ascontiguousarray(ref_levels[:, ::-1]), dtype=torch.int64)
    value = _call(crit, emb, lab, ref, ref_lab)
    value.backward()
    return float(value.detach()), emb.grad.numpy().copy()


def make_graded_case(official, name, fine, coarse_of, d, seed, *, ties=False, reference=None):
    """SupNDCG (MULTI) on two-level labels [coarse, fine]: the batch form, or queries against a
    constant reference (every query has an item of level >= 1 there)."""
    rng = np.random.default_rng(seed)
    fine = np.asarray(fine, dtype=np.int64)
    levels = np.stack([np.asarray(coarse_of)[fine], fine], axis=1)
    x = tied_rows(rng, fine, d) if ties else unit_rows(rng, len(fine), d)
    out = {"embeddings": x, "labels": levels}
    if reference is not None:
        ref_fine = np.asarray(reference, dtype=np.int64)
        ref_levels = np.stack([np.asarray(coarse_of)[ref_fine], ref_fine], axis=1)
        ref_x = unit_rows(rng, len(ref_fine), d)
        out.update(ref_embeddings=ref_x, ref_labels=ref_levels)
        out["supndcg_value"], out["supndcg_grad"] = graded_value(official.ndcg(SUPAP), x, levels, ref_x, ref_levels)
        return out
    for key, supap in (("supndcg", SUPAP), ("supndcg_inat", SUPAP_INAT)):
        out[f"{key}_value"], out[f"{key}_grad"] = graded_value(official.ndcg(supap), x, levels)
    return out


# Two-level labels for SupNDCG's graded relevance (the official `hierarchy_level: MULTI`).
GRADED_CASES = {
    # 8 classes of 3 under 3 coarse groups of uneven sizes.
    "graded_b24_d8": dict(fine=equal_classes([3] * 8), coarse_of=[0, 0, 0, 1, 1, 2, 2, 2], d=8, seed=10),
    # Exact ties, singletons and a coarse group of one class.
    "graded_ties_b18_d8": dict(
        fine=equal_classes([1, 2, 4, 4, 5, 2]), coarse_of=[0, 0, 1, 1, 1, 2], d=8, seed=11, ties=True
    ),
    # Queries against a constant reference.
    "graded_reference_b8_m20_d8": dict(
        fine=[0, 0, 1, 2, 3, 3, 4, 5],
        coarse_of=[0, 0, 1, 1, 2, 2],
        d=8,
        seed=12,
        reference=equal_classes([4, 3, 5, 2, 3, 3]),
    ),
}


CASES = {
    # 6 classes of 4: the official batch path of every loss runs as is.
    "equal_b24_d8": dict(labels=equal_classes([4] * 6), d=8, seed=0),
    # 4 classes of 4, exact ties (H(0) = 1 for positives, sigmoid(0) for negatives), copied rows.
    "ties_b16_d8": dict(labels=equal_classes([4] * 4), d=8, seed=1, ties=True),
    # Singletons (a query whose only positive is itself) and uneven class sizes.
    "uneven_b20_d8": dict(labels=equal_classes([1, 2, 3, 5, 9]), d=8, seed=2),
    "uneven_ties_b18_d8": dict(labels=equal_classes([1, 1, 4, 6, 6]), d=8, seed=3, ties=True),
    # Queries ranked against a constant reference where classes 5 and 6 are absent: no positive.
    "reference_b10_m24_d8": dict(
        labels=[0, 0, 1, 2, 2, 3, 4, 5, 6, 6], d=8, seed=4, reference=equal_classes([6, 3, 5, 2, 8])
    ),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mirror", help="checkout or bare git directory of github.com/elias-ramzi/SupRank")
    parser.add_argument("--out", default=HERE)
    parser.add_argument("--cases", nargs="*", help="write only these cases (default: all)")
    args = parser.parse_args(argv)
    root, commit = source_tree(args.mirror)
    official = Official(*load_official(root))
    torch.set_default_dtype(torch.float64)
    os.makedirs(args.out, exist_ok=True)
    makers = {
        **{n: (make_case, s) for n, s in CASES.items()},
        **{n: (make_graded_case, s) for n, s in GRADED_CASES.items()},
    }
    for name, (make, spec) in makers.items():
        if args.cases and name not in args.cases:
            continue
        out = make(official, name, **spec)
        out["official_commit"] = np.array(commit)
        path = os.path.join(args.out, f"{name}.npz")
        np.savez_compressed(path + ".tmp.npz", **out)
        os.replace(path + ".tmp.npz", path)
        print(f"{path}: " + ", ".join(f"{k}={float(v):.6f}" for k, v in out.items() if k.endswith("_value")))
    print(f"official commit {commit}")


if __name__ == "__main__":
    main()
