"""Step functions H(t) that replace the Heaviside step inside the rank of average precision.

For a query, a positive item k and another item j, ``t = score(j) - score(k)``: H(t) says how
much j counts as "ranked before" k. Each function here returns ``(value, derivative)`` so that
the AP kernel can evaluate both in one pass (its gradient is hand-written, see
``average_precision.py``). All functions are elementwise, dtype-preserving and written with
``keras.ops``.
"""

from keras import ops

# The official code clamps the sigmoid's argument to [-50, 50]; outside that range its value is
# constant (about 1.9e-22 or 1) and so is ours, with zero gradient, as in torch.clamp.
SIGMOID_CLAMP = 50.0


def heaviside_step(t):
    """Exact step, H(0) = 1 (a tie with a positive counts as ranked before). Zero gradient.

    Args:
        t: float tensor of any shape.
    Returns:
        ``(value, derivative)``: value in {0, 1}, derivative identically 0.
    """
    value = ops.cast(ops.greater_equal(t, 0), t.dtype)
    return value, ops.zeros_like(t)


def clamped_sigmoid_step(t, tau):
    """``sigmoid(t / tau)`` with the argument clamped to [-50, 50] (SmoothAP's step).

    Args:
        t: float tensor of any shape.
        tau: temperature (python float), e.g. 0.01.
    Returns:
        ``(value, derivative)`` with derivative ``sigmoid' / tau`` inside the clamp, 0 outside.
    """
    x = t / tau
    inside = ops.logical_and(ops.greater_equal(x, -SIGMOID_CLAMP), ops.less_equal(x, SIGMOID_CLAMP))
    value = ops.sigmoid(ops.clip(x, -SIGMOID_CLAMP, SIGMOID_CLAMP))
    derivative = ops.where(inside, value * (1.0 - value) / tau, ops.zeros_like(t))
    return value, derivative


def supap_negative_step(t, tau, rho, delta, start, offset):
    """SupAP's upper bound of the step for negatives (Ramzi et al. 2021, eq. 4).

    * ``t <= 0``: ``sigmoid(t / tau)`` (a negative ranked after the positive still costs a little),
    * ``0 < t <= delta``: ``start + sigmoid(t / tau)``,
    * ``t > delta``: ``rho * (t - delta) + offset`` (linear: a large gradient for negatives ranked
      far above, where a sigmoid would saturate).

    Args:
        t: float tensor of any shape.
        tau, rho, delta, start, offset: python floats (paper: 0.01, 100, 0.05, 0.5, 1.44;
            iNaturalist: start 0.0, offset 1.0).
    Returns:
        ``(value, derivative)``.
    """
    sig, dsig = clamped_sigmoid_step(t, tau)
    above = ops.greater(t, delta)
    near = ops.logical_and(ops.greater(t, 0), ops.logical_not(above))
    linear = rho * (t - delta) + offset
    value = ops.where(above, linear, ops.where(near, sig + start, sig))
    derivative = ops.where(above, ops.full_like(t, rho), dsig)
    return value, derivative
