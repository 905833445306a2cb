"""``RetrievalTrainer.train_step`` on the PyTorch backend (autograd, as Keras' torch trainer)."""

import keras
import torch
from keras import ops

from keras_roadmap import _keras_compat


def train_step(trainer, data):
    x, labels, sample_ids = trainer._unpack(data)
    variables = trainer.trainable_variables
    if trainer.chunk_size is None:
        trainer.zero_grad()
        embeddings = ops.cast(trainer.encoder(x, training=True), "float32")
        terms = trainer._objective(labels, sample_ids, embeddings, None)
        if trainer.losses:
            terms["total"] = terms["total"] + ops.sum(ops.stack([ops.cast(term, "float32") for term in trainer.losses]))
        trainer._scale_loss(terms["total"]).backward()
    else:
        terms = _cached_backward(trainer, x, labels, sample_ids)
    gradients = [v.value.grad for v in variables]
    with torch.no_grad():
        trainer.optimizer.apply(gradients, variables)
        if trainer.memory is not None:
            trainer.memory.assign_state({k: v.detach() for k, v in terms["state"].items()})
    terms = {k: v.detach() for k, v in terms.items() if k != "state"}
    return trainer._update_trackers(terms)


def _cached_backward(trainer, x, labels, sample_ids):
    """Embedding-gradient caching (see ``RetrievalTrainer(chunk_size=...)``); fills ``.grad``."""
    batch = int(keras.tree.flatten(x)[0].shape[0])
    starts = range(0, batch, trainer.chunk_size)

    def chunk(start):
        return keras.tree.map_structure(lambda t: t[start : start + trainer.chunk_size], x)

    # (1) Embed every chunk without autograd.
    with torch.no_grad():
        embeddings = torch.cat([ops.cast(trainer.encoder(chunk(s), training=True), "float32") for s in starts])
    # (2) The loss and its gradient with respect to the (B, D) embeddings.
    embeddings.requires_grad_(True)
    terms = trainer._objective(labels, sample_ids, embeddings, None)
    trainer._scale_loss(terms["total"]).backward()
    cached = embeddings.grad
    # (3) Re-embed chunk by chunk; backward of the cached gradients accumulates into .grad.
    trainer.zero_grad()
    for s in starts:
        out = trainer.encoder(chunk(s), training=True)
        torch.autograd.backward(out, grad_tensors=cached[s : s + trainer.chunk_size].to(out.dtype))
    if _keras_compat.regularization_losses(trainer):
        penalty = trainer._weight_penalty()
        trainer._scale_loss(penalty).backward()
        terms["total"] = terms["total"] + penalty
    return terms
