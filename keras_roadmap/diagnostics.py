"""Decomposability gap: how far the AP a query gets inside a training batch is from its AP
against the whole training set.

Training on batches optimises the batch AP of each query; what retrieval needs is its AP against
everything. The two differ because AP is not decomposable (a sum over batches of batch APs is not
the global AP): the ROADMAP paper (Ramzi et al. 2021, Sec. 3.2) measures the difference, calls it
the decomposability gap, and reduces it with a calibration loss (absolute score thresholds that
mean the same in every batch) and a cross-batch memory (more items per ranking).

``decomposability_gap`` computes, over class-balanced batches drawn like the training batches,
the mean of ``AP_batch(q) - AP_all(q)`` for every query ``q`` of every batch, where both APs are
exact (Heaviside ranks, ties counted pessimistically as in ``heaviside_average_precision``) and
*exclude the query itself* (the textbook AP: the query is not its own positive), so that both
terms measure how the other items are ranked and a perfect embedding gives 0. The gap is usually
positive: a batch holds far fewer negatives than the whole set.

Scores are dot products of the embeddings, as in the losses (cosine for L2-normalised models).
The measurement is NumPy (batches from ``MPerClassSampler``, batch AP from
``keras_roadmap.evaluation.average_precision``); importing the module also imports Keras, for
the callback.
"""

from __future__ import annotations

import numpy as np

from keras_roadmap.evaluation import average_precision
from keras_roadmap.evaluation.ranks import iter_positive_ranks
from keras_roadmap.samplers import MPerClassSampler

# Query rows scored against the whole set at once: bounds memory to about 16 x rows x N bytes.
_FULL_SET_ROWS = 512


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_inputs(embeddings, labels):
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] < 2 or emb.shape[1] < 1:
        raise ValueError(f"`embeddings` must be a (N, D) array with N >= 2; got shape {emb.shape}.")
    if not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"`embeddings` must be floating point; got dtype {emb.dtype}.")
    if not np.isfinite(emb).all():
        raise ValueError("`embeddings` holds NaN or inf values; check the model (e.g. a diverged training).")
    lab = np.asarray(labels)
    if lab.shape != (emb.shape[0],):
        raise ValueError(f"`labels` must have shape ({emb.shape[0]},) to match the embeddings; got {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"`labels` must hold integer class ids; got dtype {lab.dtype}.")
    return emb.astype(np.float64), lab.astype(np.int64)


def full_set_average_precision(embeddings, labels, rows=None) -> np.ndarray:
    """Exact AP of each query against all the other items (the query itself excluded).

    Same numbers as ``keras_roadmap.evaluation.average_precision(..., ties="pessimistic")`` on
    the full score rows, from the ranking routine ``retrieval_metrics`` uses
    (``keras_roadmap.evaluation.ranks.iter_positive_ranks``): only the positives' ranks are
    computed, by sorting the few items that score above a query's worst positive, so the
    callback can run every epoch.

    Args:
        embeddings: ``(N, D)`` float; labels: ``(N,)`` int.
        rows: optional int array of the queries to score (default: all N).
    Returns:
        float64 ``(len(rows),)``; NaN for a query whose class has no other item.
    """
    emb, lab = _check_inputs(embeddings, labels)
    rows = np.arange(len(lab)) if rows is None else np.asarray(rows, np.int64)
    out = np.full(len(rows), np.nan)
    done = 0
    for block_rows, offsets, rank, rank_plus in iter_positive_ranks(
        emb, emb, lab, lab, rows=rows, exclude_self=True, ties="pessimistic", max_rows=_FULL_SET_ROWS
    ):
        size = np.diff(offsets)
        has = size > 0
        if has.any():
            sums = np.add.reduceat(rank_plus / rank, offsets[:-1][has])
            out[done + np.flatnonzero(has)] = sums / size[has]
        done += len(block_rows)
    return out


def batch_average_precision(embeddings, labels) -> np.ndarray:
    """Exact AP of each item of one batch against the rest of the batch (itself excluded).

    ``(B, D)`` float, ``(B,)`` int -> float64 ``(B,)``; NaN for a query alone of its class.
    """
    emb, lab = _check_inputs(embeddings, labels)
    scores = emb @ emb.T
    relevant = lab[:, None] == lab[None, :]
    return average_precision(scores, relevant, ignore=np.eye(len(lab), dtype=bool), ties="pessimistic")


def decomposability_gap(
    embeddings,
    labels,
    batch_size: int = 128,
    samples_per_class: int = 4,
    num_batches: int | None = None,
    seed: int = 0,
    return_components: bool = False,
):
    """Mean over class-balanced batches and their queries of ``AP_batch(q) - AP_all(q)``.

    Batches come from :class:`~keras_roadmap.samplers.MPerClassSampler` (``batch_size //
    samples_per_class`` classes x ``samples_per_class`` items, epoch 0 of ``seed``), i.e. the
    batches a model trained with that sampler sees; a fixed ``seed`` gives the same batches at
    every call, so measurements during training are comparable. See the module docstring for the
    AP conventions (query excluded, pessimistic ties, dot-product scores).

    Args:
        embeddings: ``(N, D)`` float embeddings of the whole set (e.g. the training set).
        labels: ``(N,)`` int class ids.
        batch_size: B, a multiple of ``samples_per_class`` (default 128, as in training).
        samples_per_class: m (default 4; needs m >= 2 so that each query has a positive).
        num_batches: batches averaged over; default: one epoch (``N // batch_size``).
        seed: sampler seed.
        return_components: also return the two mAPs.

    Returns:
        float gap; with ``return_components``, a dict ``{"gap", "batch_map", "full_map",
        "num_queries"}`` (mAPs over the same query occurrences, so gap = batch_map - full_map).

    Raises:
        ValueError: bad shapes or dtypes (float labels included), non-finite embeddings, samples_per_class
            < 2, or a batch shape the labels cannot fill (see ``MPerClassSampler``).
    """
    emb, lab = _check_inputs(embeddings, labels)
    if not _is_int(samples_per_class) or samples_per_class < 2:
        raise ValueError(
            "`samples_per_class` must be an integer >= 2 (a query needs a positive in its batch); "
            f"got {samples_per_class!r}."
        )
    sampler = MPerClassSampler(lab, batch_size, samples_per_class, seed=seed)
    batches = sampler.batches(0)
    if num_batches is not None:
        if not _is_int(num_batches) or num_batches < 1:
            raise ValueError(f"`num_batches` must be None or a positive integer; got {num_batches!r}.")
        if num_batches > len(batches):
            # More batches than one epoch: continue with the following epochs' batches.
            extra = [sampler.batches(e) for e in range(1, -(-num_batches // len(batches)))]
            batches = np.concatenate([batches, *extra])
        batches = batches[:num_batches]
    unique_rows, inverse = np.unique(batches, return_inverse=True)
    full_ap = full_set_average_precision(emb, lab, unique_rows)[inverse.reshape(batches.shape)]
    batch_ap = np.stack([batch_average_precision(emb[b], lab[b]) for b in batches])
    # A class with a single image is sampled with replacement: its copies are positives in the
    # batch but it has no positive in the full set; such queries are left out of both means.
    valid = np.isfinite(batch_ap) & np.isfinite(full_ap)
    if not valid.any():
        raise ValueError(
            "No query has a positive both in its batch and in the full set: every class has a single item."
        )
    batch_map, full_map = float(batch_ap[valid].mean()), float(full_ap[valid].mean())
    gap = batch_map - full_map
    if return_components:
        return {"gap": gap, "batch_map": batch_map, "full_map": full_map, "num_queries": int(valid.sum())}
    return gap


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


class DecomposabilityGap(_keras_callback_base()):
    """Keras callback: measures :func:`decomposability_gap` on ``data`` every few epochs.

    The value goes into the epoch's ``logs`` (so ``History``, ``CSVLogger`` and TensorBoard
    record it) under ``key``, and with its mAPs into ``self.records``, a list of dicts
    ``{"epoch", "gap", "batch_map", "full_map"}``. Embeddings come from ``model.predict`` (for a
    :class:`~keras_roadmap.RetrievalTrainer`, the encoder's). Epochs without a measurement have
    no ``key`` in their logs.

    Args:
        data: ``(inputs, labels)``: model inputs (e.g. ``(N, H, W, C)`` images) and ``(N,)`` int
            labels, usually (a subset of) the training set.
        every_n_epochs: measure after epochs ``n - 1, 2n - 1, ...`` (default 1: every epoch).
        batch_size: as for :func:`decomposability_gap`.
        samples_per_class: as for :func:`decomposability_gap`.
        num_batches: as for :func:`decomposability_gap`.
        seed: as for :func:`decomposability_gap`.
        predict_batch_size: batch size of ``model.predict`` (default 256).
        embed_fn: optional callable ``inputs -> (N, D) embeddings`` used instead of
            ``model.predict`` (e.g. to avoid compiling a predict function under XLA).
        measure_before_training: also measure once at the start of ``fit`` (recorded with
            epoch -1, not in the logs).
        key: name of the log entry (default ``"decomposability_gap"``).
    """

    def __init__(
        self,
        data,
        every_n_epochs: int = 1,
        batch_size: int = 128,
        samples_per_class: int = 4,
        num_batches: int | None = None,
        seed: int = 0,
        predict_batch_size: int = 256,
        embed_fn=None,
        measure_before_training: bool = False,
        key: str = "decomposability_gap",
    ):
        super().__init__()
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError("`data` must be a pair (inputs, labels).")
        inputs, labels = data
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"`data` labels must be a 1-D integer array; got shape {labels.shape}, dtype {labels.dtype}."
            )
        if len(inputs) != len(labels):
            raise ValueError(f"`data` holds {len(inputs)} inputs but {len(labels)} labels.")
        if not _is_int(every_n_epochs) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be a positive integer; got {every_n_epochs!r}.")
        # Fails now, not at the end of the first epoch, if the batch shape cannot be drawn.
        MPerClassSampler(labels, batch_size, samples_per_class, seed=seed)
        self.inputs, self.labels = inputs, labels
        self.every_n_epochs = int(every_n_epochs)
        self.gap_kwargs = dict(
            batch_size=batch_size, samples_per_class=samples_per_class, num_batches=num_batches, seed=seed
        )
        self.predict_batch_size = int(predict_batch_size)
        self.embed_fn = embed_fn
        self.measure_before_training = bool(measure_before_training)
        self.key = key
        self.records = []

    def measure(self):
        """Gap components of the current model on ``data`` (a dict, see the function)."""
        if self.embed_fn is not None:
            embeddings = self.embed_fn(self.inputs)
        else:
            embeddings = self.model.predict(self.inputs, batch_size=self.predict_batch_size, verbose=0)
        embeddings = np.asarray(embeddings, np.float32)
        return decomposability_gap(embeddings, self.labels, return_components=True, **self.gap_kwargs)

    def on_train_begin(self, logs=None):
        if self.measure_before_training:
            self._record(-1, self.measure())

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        result = self.measure()
        self._record(epoch, result)
        if logs is not None:
            logs[self.key] = result["gap"]

    def _record(self, epoch, result):
        self.records.append({"epoch": int(epoch), **{k: result[k] for k in ("gap", "batch_map", "full_map")}})
