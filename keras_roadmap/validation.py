"""Argument checks shared by every public constructor: one place, one message format.

Each check returns the value converted (``float``/``int``) or raises ``TypeError`` for a wrong
type and ``ValueError`` for a wrong value, with a message naming the owner (e.g.
``"SupAPLoss"``), the argument, the value received and the valid range::

    self.rho = validation.number("rho", rho, owner="SupAPLoss", minimum=0)
"""

from __future__ import annotations

import math
import numbers


def _where(owner, name):
    return f"{owner}: `{name}`" if owner else f"`{name}`"


def _range_text(minimum, maximum, min_open, max_open) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if min_open else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if max_open else '<='} {maximum}")
    return " and ".join(parts)


def _require_type(name, value, owner, accepted, expected, allow_none):
    """TypeError unless ``value`` is an instance of ``accepted`` (a bool never counts)."""
    if isinstance(value, bool) or not isinstance(value, accepted):
        expected += " or None" if allow_none else ""
        raise TypeError(f"{_where(owner, name)} must be {expected}, got {value!r} ({type(value).__name__}).")


def number(name, value, *, owner=None, minimum=None, maximum=None, min_open=False, max_open=False, allow_none=False):
    """A finite real number in the given range, as a python float (None passes with
    ``allow_none``). Bools, strings and other non-numbers raise TypeError; NaN, Inf and values
    out of range raise ValueError."""
    if value is None and allow_none:
        return None
    _require_type(name, value, owner, numbers.Real, "a real number", allow_none)
    value = float(value)
    bounds = _range_text(minimum, maximum, min_open, max_open)
    if not math.isfinite(value):
        raise ValueError(
            f"{_where(owner, name)} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}."
        )
    low_bad = minimum is not None and (value <= minimum if min_open else value < minimum)
    high_bad = maximum is not None and (value >= maximum if max_open else value > maximum)
    if low_bad or high_bad:
        raise ValueError(f"{_where(owner, name)} must be {bounds}, got {value!r}.")
    return value


def integer(name, value, *, owner=None, minimum=None, maximum=None, allow_none=False):
    """An integer (python or numpy; not bool, not 2.0) in ``[minimum, maximum]``, as an int."""
    if value is None and allow_none:
        return None
    _require_type(name, value, owner, numbers.Integral, "an integer", allow_none)
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(
            f"{_where(owner, name)} must be an integer {_range_text(minimum, maximum, False, False)}, got {value!r}."
        )
    return value


def boolean(name, value, *, owner=None):
    """A bool (python or numpy bool)."""
    if not isinstance(value, (bool,)) and type(value).__name__ != "bool_":
        raise TypeError(f"{_where(owner, name)} must be True or False, got {value!r} ({type(value).__name__}).")
    return bool(value)


def choice(name, value, choices, *, owner=None):
    """One of ``choices`` (compared with ==)."""
    if value not in tuple(choices):
        raise ValueError(f"{_where(owner, name)} must be one of {tuple(choices)}, got {value!r}.")
    return value


def ordered(low_name, low, high_name, high, *, owner=None):
    """``low <= high`` (both already checked numbers)."""
    if low > high:
        raise ValueError(f"{owner + ': ' if owner else ''}`{low_name}` ({low!r}) must be <= `{high_name}` ({high!r}).")


# --------------------------------------------------------------- domain checks of the losses


def supap_slopes(rho, delta, *, owner=None):
    """SupAP's ``rho >= 0`` (slope of the linear piece) and ``delta >= 0`` (where it starts):
    negative values break the upper bound of the rank."""
    return number("rho", rho, owner=owner, minimum=0), number("delta", delta, owner=owner, minimum=0)


def margins(pos_margin, neg_margin, *, owner=None):
    """Calibration margins: cosines, so in ``(-1, 1]``, with ``neg_margin <= pos_margin``.
    -1 itself is refused: a cosine is never below it, so ``neg_margin=-1`` penalises every
    negative pair whatever its score and ``pos_margin=-1`` never penalises a positive."""
    pos = number("pos_margin", pos_margin, owner=owner, minimum=-1, maximum=1, min_open=True)
    neg = number("neg_margin", neg_margin, owner=owner, minimum=-1, maximum=1, min_open=True)
    ordered("neg_margin", neg, "pos_margin", pos, owner=owner)
    return pos, neg


def loss_weights(*, owner=None, **weights):
    """Weights of loss terms: finite and ``>= 0`` (a negative weight maximises a loss)."""
    return tuple(number(name, value, owner=owner, minimum=0) for name, value in weights.items())


# ------------------------------------------------------------------ trainer, samplers, export


def trainer_args(encoder, memory, chunk_size, *, memory_type):
    """RetrievalTrainer's arguments: a Keras model/layer, an optional ``memory_type``
    (CrossBatchMemory, passed in so this module imports none of ours) and ``chunk_size`` None
    or an integer >= 1."""
    import keras

    if not isinstance(encoder, keras.layers.Layer):
        raise TypeError(
            "RetrievalTrainer: `encoder` must be a Keras model mapping inputs to (B, D) embeddings, "
            f"got {type(encoder).__name__}."
        )
    if memory is not None and not isinstance(memory, memory_type):
        raise TypeError(f"RetrievalTrainer: `memory` must be None or a CrossBatchMemory, got {type(memory).__name__}.")
    integer("chunk_size", chunk_size, owner="RetrievalTrainer", minimum=1, allow_none=True)


def sampler_args(owner, batch_size, samples_per_class, seed):
    """Sampler sizes: integers >= 1 (``batch_size`` a multiple of ``samples_per_class`` is
    checked by the sampler, which can suggest a fix) and an integer seed >= 0."""
    integer("batch_size", batch_size, owner=owner, minimum=1)
    integer("samples_per_class", samples_per_class, owner=owner, minimum=1)
    integer("seed", seed, owner=owner, minimum=0)


def supap_parameters(*, owner=None, tau, rho, delta, start, offset):
    """SupAP's five parameters checked: ``tau > 0``, ``rho >= 0``, ``delta >= 0``, finite
    ``start`` and ``offset``; returned as a dict of floats."""
    rho, delta = supap_slopes(rho, delta, owner=owner)
    return {
        "tau": number("tau", tau, owner=owner, minimum=0, min_open=True),
        "rho": rho,
        "delta": delta,
        "start": number("start", start, owner=owner),
        "offset": number("offset", offset, owner=owner),
    }
