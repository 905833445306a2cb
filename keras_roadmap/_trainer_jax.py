"""``RetrievalTrainer`` steps on the JAX backend: stateless, as Keras' JAX trainer requires.

Keras calls ``train_step(state, data)`` with ``state = (trainable, non_trainable, optimizer,
metrics)`` variable values and expects ``(logs, new_state)``. The trainer's Keras code (encoder,
loss, memory update, trackers) runs unchanged inside ``keras.StatelessScope``s that map every
variable to its value in ``state``; what it assigns is read back as the new state.
"""

import jax
import keras
from keras import ops

from keras_roadmap import _keras_compat


def _run_stateless(variables, values, fn, collect_losses=False):
    """``(fn(), new values of variables, scope.losses)`` with ``variables`` bound to ``values``."""
    with keras.StatelessScope(
        state_mapping=list(zip(variables, values, strict=False)), collect_losses=collect_losses
    ) as scope:
        out = fn()
    new = []
    for variable, value in zip(variables, values, strict=False):
        current = scope.get_current_value(variable)
        new.append(value if current is None else current)
    return out, new, list(scope.losses)


def train_step(trainer, state, data):
    trainable_values, non_trainable_values, optimizer_values, metrics_values = state
    x, labels, sample_ids = trainer._unpack(data)
    trainable = trainer.trainable_variables
    non_trainable = trainer.non_trainable_variables
    optimizer_variables = trainer.optimizer.variables

    def encode(t_values, nt_values, inputs):
        """Embeddings (float32) and the non-trainable values after the forward pass (BN)."""
        (embeddings, penalty), new = _stateless_forward(
            trainer, trainable + non_trainable, list(t_values) + list(nt_values), inputs
        )
        return embeddings, new[len(trainable) :], penalty

    def scaled(value):
        out, _, _ = _run_stateless(optimizer_variables, optimizer_values, lambda: trainer._scale_loss(value))
        return out

    if trainer.chunk_size is None:

        def objective(t_values):
            embeddings, nt_new, penalty = encode(t_values, non_trainable_values, x)
            terms, _, _ = _run_stateless(
                trainable + non_trainable,
                list(t_values) + list(nt_new),
                lambda: trainer._objective(labels, sample_ids, embeddings, None),
            )
            terms["total"] = terms["total"] + penalty
            return scaled(terms["total"]), (terms, nt_new)

        (_, (terms, non_trainable_values)), grads = jax.value_and_grad(objective, has_aux=True)(trainable_values)
    else:
        grads, terms, non_trainable_values = _cached_gradients(
            trainer, x, labels, sample_ids, trainable_values, non_trainable_values, encode, scaled
        )

    trainable_values, optimizer_values = trainer.optimizer.stateless_apply(optimizer_values, grads, trainable_values)
    if trainer.memory is not None:
        # The memory's variables are non-trainable variables of the trainer.
        _, non_trainable_values, _ = _run_stateless(
            non_trainable, non_trainable_values, lambda: trainer.memory.assign_state(terms["state"])
        )
    logs, metrics_values, _ = _run_stateless(
        trainer.metrics_variables, metrics_values, lambda: trainer._update_trackers(terms)
    )
    return logs, (trainable_values, non_trainable_values, optimizer_values, metrics_values)


def _stateless_forward(trainer, variables, values, inputs):
    """Encoder forward pass with every layer loss (``add_loss``) and weight regularizer added."""

    def forward():
        embeddings = ops.cast(trainer.encoder(inputs, training=True), "float32")
        penalties = [ops.cast(term, "float32") for term in _keras_compat.regularization_losses(trainer)]
        return embeddings, penalties

    (embeddings, penalties), new, losses = _run_stateless(variables, values, forward, collect_losses=True)
    penalties = penalties + [ops.cast(term, "float32") for term in losses]
    penalty = ops.sum(ops.stack(penalties)) if penalties else ops.zeros((), "float32")
    return (embeddings, penalty), new


def _cached_gradients(trainer, x, labels, sample_ids, trainable_values, non_trainable_values, encode, scaled):
    """Embedding-gradient caching (see ``RetrievalTrainer(chunk_size=...)``), statelessly.

    The batch size is static under ``jax.jit``, so the chunks are Python slices (the last one
    may be shorter: one more trace of the encoder, no padding needed).
    """
    batch = int(jax.tree_util.tree_leaves(x)[0].shape[0])
    starts = list(range(0, batch, trainer.chunk_size))

    def chunk(start):
        return jax.tree_util.tree_map(lambda t: t[start : start + trainer.chunk_size], x)

    # (1) Embed every chunk, no gradient.
    pieces = []
    for start in starts:
        embeddings, non_trainable_values, _ = encode(trainable_values, non_trainable_values, chunk(start))
        pieces.append(jax.lax.stop_gradient(embeddings))
    embeddings = ops.concatenate(pieces, axis=0)

    # (2) The loss and its gradient with respect to the (B, D) embeddings.
    trainable = trainer.trainable_variables
    non_trainable = trainer.non_trainable_variables

    def objective(emb):
        terms, _, _ = _run_stateless(
            trainable + non_trainable,
            list(trainable_values) + list(non_trainable_values),
            lambda: trainer._objective(labels, sample_ids, emb, None),
        )
        return scaled(terms["total"]), terms

    embedding_grads, terms = jax.grad(objective, has_aux=True)(embeddings)

    # (3) Re-embed each chunk and pull its cached embedding gradients back to the parameters.
    grads = jax.tree_util.tree_map(lambda v: ops.zeros_like(v), list(trainable_values))
    penalty = None
    for start in starts:
        nt_before = non_trainable_values

        def chunk_forward(t_values, _start=start, _nt=nt_before):
            emb, nt_new, pen = encode(t_values, _nt, chunk(_start))
            return emb, (nt_new, pen)

        _, vjp, (non_trainable_values, penalty) = jax.vjp(chunk_forward, list(trainable_values), has_aux=True)
        (chunk_grads,) = vjp(embedding_grads[start : start + trainer.chunk_size])
        grads = [g + c for g, c in zip(grads, chunk_grads, strict=False)]

    # Weight penalties once (not once per chunk).
    if _keras_compat.regularization_losses(trainer):

        def penalty_of(t_values):
            out, _, _ = _run_stateless(
                trainable + non_trainable, list(t_values) + list(non_trainable_values), trainer._weight_penalty
            )
            return scaled(out), out

        reg_grads, value = jax.grad(penalty_of, has_aux=True)(list(trainable_values))
        grads = [g + r for g, r in zip(grads, reg_grads, strict=False)]
        terms["total"] = terms["total"] + value
    return grads, terms, non_trainable_values


def test_step(trainer, state, data):
    trainable_values, non_trainable_values, metrics_values = state
    variables = trainer.trainable_variables + trainer.non_trainable_variables + trainer.metrics_variables
    values = list(trainable_values) + list(non_trainable_values) + list(metrics_values)
    logs, new, _ = _run_stateless(variables, values, lambda: trainer._test_logs(data))
    n_t, n_nt = len(trainable_values), len(non_trainable_values)
    return logs, (trainable_values, non_trainable_values, new[n_t + n_nt :])
