"""Write the float64 fixtures of HAPPIER's H-AP loss and metrics and of RS@k / SiMix from the
official code (never copied: extracted from a mirror's git directory into a temporary folder and
imported from there).

Usage (needs torch and numpy; not run by the tests):

    python tests/data/official_happier/make_fixtures.py \
        --happier /work/.mirror/elias-ramzi+HAPPIER/repo \
        --recallatk /work/.mirror/yash0307+RecallatK_surrogate/repo

Each argument is a git directory (a bare mirror) or a checkout. Shims, each needed for the
official code to run here or in float64 (see README.md):
* ``torch.heaviside`` has no backward in torch >= 1.9; the step is replaced by ``(t >= 0)`` cast
  to the input dtype (the same values, H(0) = 1, no gradient as in torch 1.8.1);
* the relevance table (``get_relevances_pop``) and ``.float()`` casts in the metrics compute in
  float32; they are redirected to float64;
* RS@k calls ``.cuda()``; it is made a no-op on CPU.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
L_MISSING = -1


def checkout(path, tmp, name):
    """A source folder for ``path`` (a checkout, or a git dir extracted with ``git archive``) and its commit."""
    git = ["git", f"--git-dir={path}"] if not os.path.isdir(os.path.join(path, ".git")) else ["git", "-C", path]
    commit = subprocess.check_output(git + ["rev-parse", "HEAD"], text=True).strip()
    if os.path.isdir(os.path.join(path, ".git")):
        return path, commit
    out = os.path.join(tmp, name)
    os.makedirs(out)
    archive = subprocess.run(git + ["archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out, commit


def load(name, path, package=False):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name,
        os.path.join(path, "__init__.py") if package else path,
        submodule_search_locations=[path] if package else None,
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_happier(src, float64=True):
    """The official loss, relevance and metric modules, without the package's training imports.

    ``float64=False`` leaves the official float32 casts alone (for timing, not for fixtures)."""
    root = os.path.join(src, "happier")
    for pkg in ("happier", "happier.losses", "happier.engine"):
        module = types.ModuleType(pkg)
        module.__path__ = [os.path.join(root, *pkg.split(".")[1:])]
        sys.modules[pkg] = module
    lib = types.ModuleType("happier.lib")
    import logging

    lib.LOGGER = logging.getLogger("happier")
    for f in ("create_label_matrix", "create_relevance_matrix", "safe_mean"):
        setattr(lib, f, getattr(load(f"happier.lib.{f}", os.path.join(root, "lib", f + ".py")), f))
    sys.modules["happier.lib"] = lib
    sys.modules["happier"].lib = lib
    load("happier.losses.tools", os.path.join(root, "losses", "tools"), package=True)
    hap = load("happier.losses.hap_loss", os.path.join(root, "losses", "hap_loss.py"))
    rel = load(
        "happier.engine.compute_relevance_on_the_fly", os.path.join(root, "engine", "compute_relevance_on_the_fly.py")
    )
    metrics = load("happier.engine.metrics", os.path.join(root, "engine", "metrics.py"))

    def heaviside(tens, val=1.0, target=None, general=None):
        return (tens >= 0).to(tens.dtype)  # torch.heaviside's values (H(0) = 1), constant

    hap.heaviside = heaviside

    if float64:  # float32 casts of the relevance table and of the metrics, in float64 (see the docstring)
        rel.torch = Float64Torch("torch")
        torch.Tensor.float = torch.Tensor.double
    return hap, rel, metrics


class Float64Torch(types.ModuleType):
    float = torch.float64

    def __getattr__(self, key):
        return getattr(torch, key)


def import_rsk(src):
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run
    sys.path.insert(0, os.path.join(src, "src"))
    try:
        losses = load("rsk_losses", os.path.join(src, "src", "losses.py"))
        mixup = load("rsk_mixup", os.path.join(src, "src", "mixup.py"))
    finally:
        sys.path.pop(0)
    return losses, mixup


# ---------------------------------------------------------------- HAPPIER


def tree_labels(rng, batch, num_levels, fine_per_class, classes_per_parent):
    """Coarse-to-fine ``(B, L)`` labels of a random tree (each node has one parent), uneven class
    sizes, and a last row alone at every level (a query without positive)."""
    fine = np.repeat(np.arange(batch), rng.choice(fine_per_class, size=batch))[: batch - 1]
    rng.shuffle(fine)
    columns = [fine]
    ids = fine
    for _ in range(num_levels - 1):
        parents = max(1, len(np.unique(ids)) // classes_per_parent)
        ids = rng.integers(0, parents, size=ids.max() + 1)[ids]
        columns.append(ids)
    labels = np.stack(columns[::-1], axis=1)
    return np.concatenate([labels, labels.max(axis=0, keepdims=True) + 1]).astype(np.int64)


def with_unknowns(rng, labels, fraction):
    """Trailing (finest) levels set to -1 for a fraction of rows (an item known only coarsely)."""
    labels = labels.copy()
    for row in np.flatnonzero(rng.random(len(labels)) < fraction):
        cut = int(rng.integers(0, labels.shape[1]))
        labels[row, cut:] = L_MISSING
    return labels


def official_labels(labels):
    """What the official code sees: unknown ids replaced by fresh ids (each its own singleton),
    columns fine-to-coarse as the official datasets store them."""
    labels = labels.copy()
    fresh = labels.max() + 1
    for row, col in zip(*np.nonzero(labels < 0), strict=True):
        labels[row, col] = fresh
        fresh += 1
    return labels[:, ::-1].copy()


def official_hap(hap, rel, emb, labels, ref_emb=None, ref_labels=None, **kwargs):
    num_levels = labels.shape[1]
    loss = hap.HAPLoss(return_type="HAP", **kwargs)

    def relevance_fn(target):
        return rel.compute_relevance_on_the_fly(target, alpha=1.0, check_for=range(num_levels + 1), type="pop")

    x = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor(official_labels(labels))
    if ref_emb is None:
        per_query = loss(x, lab, relevance_fn)
    else:
        per_query = loss(
            x,
            lab,
            relevance_fn,
            ref_embeddings=torch.tensor(ref_emb),
            ref_labels=torch.tensor(official_labels(ref_labels)),
            force_general=True,
        )
    value = (1 - per_query).mean()
    (grad,) = torch.autograd.grad(value, x)
    return per_query.detach().numpy(), value.item(), grad.numpy()


def hap_cases(rng, hap, rel):
    out = {}
    cases = [
        ("tree2_b24", 24, 2, [1, 2, 3, 4], 3, 0.0, False),
        ("tree3_b32_unknown", 32, 3, [1, 2, 3, 5], 2, 0.2, False),
        ("tree3_b20_ties", 20, 3, [2, 4], 2, 0.1, True),
        ("tree2_b16_inat", 16, 2, [1, 3, 4], 2, 0.0, False),
    ]
    for name, batch, levels, sizes, per_parent, unknown, ties in cases:
        labels = with_unknowns(rng, tree_labels(rng, batch, levels, sizes, per_parent), unknown)
        emb = rng.normal(size=(batch, 8))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        if ties:  # exact score ties: repeated rows
            emb[1::4] = emb[0::4][: len(emb[1::4])]
        params = dict(
            tau=0.01, rho=100.0, offset=1.44, delta=0.05, start=0.5, beta=25, gamma=0.5, leak=10, with_hrank=False
        )
        if name.endswith("inat"):
            params.update(offset=1.0, start=0.0)
        per_query, value, grad = official_hap(hap, rel, emb, labels, **params)
        out[f"hap_{name}"] = dict(
            labels=labels,
            embeddings=emb,
            per_query=per_query,
            value=np.float64(value),
            grad=grad,
            offset=params["offset"],
            start=params["start"],
        )
    # reference form (official general_forward): queries against a separate set
    labels = tree_labels(rng, 40, 2, [2, 3, 4], 3)
    emb = rng.normal(size=(40, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q, r = slice(0, 12), slice(12, 40)
    per_query, value, grad = official_hap(
        hap,
        rel,
        emb[q],
        labels[q],
        emb[r],
        labels[r],
        tau=0.01,
        rho=100.0,
        offset=1.44,
        delta=0.05,
        start=0.5,
        beta=25,
        gamma=0.5,
        leak=10,
        with_hrank=False,
    )
    keep = np.isfinite(per_query)
    out["hap_reference"] = dict(
        labels=labels[q],
        embeddings=emb[q],
        ref_labels=labels[r],
        ref_embeddings=emb[r],
        per_query=per_query,
        has_positive=keep,
        value=np.float64(np.mean(1 - per_query[keep])),
        offset=1.44,
        start=0.5,
    )
    return out


# ---------------------------------------------------------------- hierarchical metrics


def official_metrics(metrics, rel, labels, order):
    """Official H-AP / ASI / NDCG of ``order`` (each query's ranking of the others, same source)."""
    num_levels = labels.shape[1]
    lab = torch.tensor(official_labels(labels))
    target_all = (lab.unsqueeze(1) == lab.unsqueeze(0)).sum(-1)  # create_label_matrix, with the query
    relevances = rel.relevance_for_batch(target_all, alpha=1.0, check_for=range(num_levels + 1), type="pop")
    sorted_target = (lab.unsqueeze(1) == lab[torch.tensor(order)]).sum(-1)
    sorted_rel = torch.gather(relevances, 1, sorted_target)
    if True:
        hap = metrics.hap(sorted_rel, relevances, reduce=False)
        # the official H-AP matches levels by relevance value: give a level whose value another level
        # already has a value no item has, to count each item once (our definition)
        dedup = relevances.clone()
        for row in range(len(dedup)):
            seen = set()
            for col in range(1, dedup.shape[1]):
                v = float(dedup[row, col])
                if v in seen:
                    dedup[row, col] = -1.0 - col
                seen.add(v)
        hap_once = metrics.hap(sorted_rel, dedup, reduce=False)
        asi = metrics.asi(sorted_target, reduce=False)
        ndcg = metrics.ndcg(sorted_target, reduce=False)
    collision = np.array([len(set(r[1:].tolist())) < num_levels for r in relevances.numpy()])
    return dict(
        hap=hap.numpy(), hap_once=hap_once.numpy(), asi=asi.double().numpy(), ndcg=ndcg.numpy(), collision=collision
    )


def metric_cases(rng, metrics, rel):
    out = {}
    for name, n, levels, sizes in (("tree2_n30", 30, 2, [1, 2, 3, 4]), ("tree3_n40", 40, 3, [1, 2, 4, 6])):
        labels = with_unknowns(rng, tree_labels(rng, n, levels, sizes, 2), 0.1)
        emb = rng.normal(size=(n, 4))
        # rank by score, ties (none: continuous draws) by index; the query left out
        scores = emb @ emb.T
        order = []
        for q in range(n):
            others = np.array([j for j in range(n) if j != q])
            order.append(others[np.argsort(-scores[q, others], kind="stable")])
        res = official_metrics(metrics, rel, labels, np.array(order))
        out[f"metrics_{name}"] = dict(labels=labels, embeddings=emb, **res)
    return out


# ---------------------------------------------------------------- RS@k and SiMix


def official_rsk(losses, emb, num_id, k_vals=(1, 2, 4, 8, 16), anneal=0.01, batch_size=None):
    batch = emb.shape[0]
    criterion = losses.RecallatK(anneal, batch_size or batch, num_id, emb.shape[1], list(k_vals), [1] * len(k_vals), 0)
    x = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
    total = 0.0
    for q in range(batch):
        total = total + criterion(x, q)
    (grad,) = torch.autograd.grad(total, x)
    return total.item(), grad.numpy()


def rsk_cases(rng, losses, mixup):
    out = {}
    for name, classes, m, dim, ties in (
        ("c8_m4", 8, 4, 8, False),
        ("c6_m3_ties", 6, 3, 8, True),
        ("c20_m4", 20, 4, 16, False),
    ):
        emb = rng.normal(size=(classes * m, dim))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        if ties:
            emb[1::5] = emb[0::5][: len(emb[1::5])]
        value, grad = official_rsk(losses, emb, classes)
        out[f"rsk_{name}"] = dict(
            embeddings=emb, labels=np.repeat(np.arange(classes), m), value=np.float64(value), grad=grad
        )
    # SiMix: the official pos_mixup with seeded alphas, then RS@k on the mixed batch
    classes, m = 5, 4
    emb = rng.normal(size=(classes * m, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.random.seed(7)
    pair_order = [(0, 1), (1, 2), (2, 3), (0, 3), (0, 2), (1, 3)]  # pos_mixup's order for 4 per class
    alphas = np.random.rand(classes * len(pair_order)).reshape(classes, len(pair_order))
    # our simix lists a class's pairs (i < j) lexicographically
    ours = sorted(range(len(pair_order)), key=lambda p: pair_order[p])
    alphas_ours = alphas[:, ours].reshape(-1)
    np.random.seed(7)
    x = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
    mixed = mixup.pos_mixup(x, classes)
    criterion = losses.RecallatK(0.01, mixed.shape[0], classes, 8, [1, 2, 4, 8, 16], [1] * 5, 1)
    total = 0.0
    for q in range(mixed.shape[0]):
        total = total + criterion(mixed, q)
    (grad,) = torch.autograd.grad(total, x)
    out["simix_c5_m4"] = dict(
        embeddings=emb,
        labels=np.repeat(np.arange(classes), m),
        alphas=alphas_ours,
        mixed=mixed.detach().numpy(),
        value=np.float64(total.item()),
        grad=grad.numpy(),
    )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--happier", required=True)
    parser.add_argument("--recallatk", required=True)
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    with tempfile.TemporaryDirectory() as tmp:
        happier_src, happier_commit = checkout(args.happier, tmp, "happier")
        rsk_src, rsk_commit = checkout(args.recallatk, tmp, "rsk")
        hap, rel, metrics = import_happier(happier_src)
        losses, mixup = import_rsk(rsk_src)
        rng = np.random.default_rng(2022)
        cases = {**hap_cases(rng, hap, rel), **metric_cases(rng, metrics, rel), **rsk_cases(rng, losses, mixup)}
    provenance = {
        "happier_commit": happier_commit,
        "recallatk_commit": rsk_commit,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for name, arrays in cases.items():
        path = os.path.join(args.out, f"{name}.npz")
        np.savez_compressed(path + ".tmp.npz", provenance=json.dumps(provenance), **arrays)
        os.replace(path + ".tmp.npz", path)
        print("wrote", path)
    print(json.dumps(provenance))


if __name__ == "__main__":
    main()
