"""Optimisers and learning-rate schedules with the numerics of the paper's PyTorch code.

The ROADMAP paper trains with ``torch.optim.Adam`` (SOP, CUB, INShop, iNaturalist with ResNet-50)
or ``torch.optim.AdamW`` (DeiT), two learning rates (backbone and projection head) and a
``MultiStepLR`` stepped once per epoch. Keras 3 differs from PyTorch in three places that change
the trajectory, so this module re-implements the update rules instead of wrapping Keras':

* ``weight_decay`` in ``keras.optimizers.Adam`` is *decoupled* (AdamW); PyTorch's ``Adam``
  adds ``wd * param`` to the gradient *before* the moments (coupled L2). ``decay_style`` picks one
  explicitly; the default is ``"coupled"``, the paper's. The method is never changed silently.
* Keras' Adam puts epsilon on the *un*-corrected second moment (``sqrt(v) + eps`` after folding
  the bias corrections into the step size); PyTorch divides by ``sqrt(v_hat) + eps``. With the
  paper's tiny learning rates and eps=1e-8 this is visible on small gradients.
* Per-parameter-group learning rates: one optimiser whose ``lr_multipliers`` map a variable-path
  prefix to a factor of the base learning rate. For Adam/AdamW/SGD this is exactly equivalent to
  PyTorch's two parameter groups sharing betas/eps/decay, and it keeps one set of optimiser
  variables, so ``model.save`` / ``load_model`` and checkpoints work as for any Keras optimiser.

Public API: :class:`TorchAdam`, :class:`TorchSGD`, :class:`MultiStepDecay`, :class:`CosineAnnealingDecay`,
:func:`build_optimizer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
from keras import ops

from keras_roadmap import _keras_compat

# The optimiser recognises the projection head of `keras_roadmap.models` embedders by this
# prefix of `variable.path` (head layers are named "head_*").
from keras_roadmap.models.head import HEAD_PREFIX

_DECAY_STYLES = ("coupled", "decoupled")


def _check_decay(weight_decay, decay_style):
    if decay_style not in _DECAY_STYLES:
        raise ValueError(
            f"decay_style must be one of {_DECAY_STYLES}, got {decay_style!r}. 'coupled' adds "
            "weight_decay * param to the gradient (torch.optim.Adam/SGD); 'decoupled' shrinks "
            "the parameter by lr * weight_decay (torch.optim.AdamW, keras AdamW)."
        )
    if weight_decay is None:
        return 0.0
    weight_decay = float(weight_decay)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    return weight_decay


def _check_multipliers(lr_multipliers):
    if lr_multipliers is None:
        return {}
    if not isinstance(lr_multipliers, Mapping):
        raise TypeError(
            "lr_multipliers must be a dict {variable-path prefix: factor}, e.g. "
            f"{{'head_': 2.0}}; got {type(lr_multipliers).__name__}."
        )
    checked = {}
    for prefix, factor in lr_multipliers.items():
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"lr_multipliers keys must be non-empty strings, got {prefix!r}.")
        factor = float(factor)
        if factor < 0:
            raise ValueError(f"lr_multipliers[{prefix!r}] must be >= 0, got {factor}.")
        checked[prefix] = factor
    return checked


def _check_group_learning_rates(groups):
    """``{prefix: float > 0 or LearningRateSchedule}`` (a serialised schedule is rebuilt)."""
    if groups is None:
        return {}
    if not isinstance(groups, Mapping):
        raise TypeError(
            "group_learning_rates must be a dict {variable-path prefix: learning rate or schedule}, "
            f"e.g. {{'cluster_proxies': 10.0}}; got {type(groups).__name__}."
        )
    checked = {}
    for prefix, rate in groups.items():
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"group_learning_rates keys must be non-empty strings, got {prefix!r}.")
        if isinstance(rate, Mapping):
            rate = keras.optimizers.schedules.deserialize(dict(rate))
        if not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not float(rate) > 0:
                raise ValueError(
                    f"group_learning_rates[{prefix!r}] must be a number > 0 or a "
                    f"keras.optimizers.schedules.LearningRateSchedule, got {rate!r}."
                )
            rate = float(rate)
        checked[prefix] = rate
    return checked


def _group_rate(rate, iterations):
    """A group's learning rate at step ``iterations`` (a float or a schedule of the step)."""
    if isinstance(rate, float):
        return rate
    return rate(iterations)


class _GroupedDecayOptimizer(keras.optimizers.Optimizer):
    """Shared machinery: per-prefix learning-rate factors and coupled/decoupled weight decay.

    Subclasses implement ``_apply_update(gradient, variable, lr)`` with the already-scaled
    learning rate and the already-decayed gradient.
    """

    def __init__(
        self,
        learning_rate,
        weight_decay,
        decay_style,
        lr_multipliers,
        name,
        **kwargs,
    ):
        # Keras' own `weight_decay` is always decoupled and uses the *base* learning rate, so it
        # stays None here; decay is applied per variable in `update_step`.
        # Popped here so that TorchAdam and TorchSGD take it through their **kwargs.
        group_learning_rates = _check_group_learning_rates(kwargs.pop("group_learning_rates", None))
        frozen_steps = kwargs.pop("frozen_steps", 0)
        if isinstance(frozen_steps, bool) or not isinstance(frozen_steps, int) or frozen_steps < 0:
            raise ValueError(f"frozen_steps must be an int >= 0, got {frozen_steps!r}.")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.group_learning_rates = group_learning_rates
        self.frozen_steps = frozen_steps
        self._variable_groups = []
        self._variable_frozen = []
        self.decay_rate = _check_decay(weight_decay, decay_style)
        self.decay_style = decay_style
        self.lr_multipliers = _check_multipliers(lr_multipliers)
        self._variable_lr_factors = []

    def lr_factor_for(self, path: str) -> float:
        """Learning-rate factor of a variable path: the first matching prefix wins, else 1.0."""
        for prefix, factor in self.lr_multipliers.items():
            if path.startswith(prefix):
                return factor
        return 1.0

    def frozen_for(self, path: str) -> bool:
        """Whether ``frozen_steps`` holds this variable: one of the base group (no
        ``lr_multipliers`` prefix, no ``group_learning_rates`` prefix: the backbone)."""
        if not self.frozen_steps or self.group_for(path) is not None:
            return False
        return not any(path.startswith(prefix) for prefix in self.lr_multipliers)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._variable_lr_factors = [self.lr_factor_for(v.path) for v in var_list]
        self._variable_groups = [self.group_for(v.path) for v in var_list]
        self._variable_frozen = [self.frozen_for(v.path) for v in var_list]

    def group_for(self, path: str):
        """The ``group_learning_rates`` prefix of a variable path (first match wins), or None."""
        for prefix in self.group_learning_rates:
            if path.startswith(prefix):
                return prefix
        return None

    def update_step(self, gradient, variable, learning_rate):
        index = _keras_compat.variable_index(self, variable)
        group = self._variable_groups[index] if self._variable_groups else None
        if group is None:
            lr = ops.cast(learning_rate, variable.dtype) * self._variable_lr_factors[index]
        else:
            lr = ops.cast(_group_rate(self.group_learning_rates[group], self.iterations), variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        # The official warm-up (SupRank `warmup_step`) skips the backbone optimiser's step: no
        # update, no moment update, and its step count (Adam's bias correction) starts after.
        active = None
        if self._variable_frozen and self._variable_frozen[index]:
            active = ops.greater_equal(self.iterations, self.frozen_steps)
        if self.decay_rate > 0 and _keras_compat.uses_weight_decay(self, variable):
            if self.decay_style == "coupled":
                gradient = gradient + self.decay_rate * variable
            else:
                # torch.optim.AdamW: param *= 1 - lr * wd, before the moment update.
                self._assign_if(active, variable, variable - lr * self.decay_rate * variable)
        self._apply_update(gradient, variable, lr, index, active)

    def _assign_if(self, active, variable, value):
        """``variable <- value``, or (``active`` a bool scalar) only where it is True."""
        self.assign(variable, value if active is None else ops.where(active, value, variable))

    def _step_count(self, active, dtype):
        """The 1-based step of this update; for a frozen variable counted from the end of the freeze."""
        if active is None:
            return ops.cast(self.iterations + 1, dtype)
        return ops.cast(ops.maximum(self.iterations + 1 - self.frozen_steps, 1), dtype)

    def _apply_update(self, gradient, variable, lr, index, active):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weight_decay": self.decay_rate,
                "decay_style": self.decay_style,
                "lr_multipliers": dict(self.lr_multipliers),
            }
        )
        if self.frozen_steps:
            config["frozen_steps"] = self.frozen_steps
        if self.group_learning_rates:
            config["group_learning_rates"] = {
                prefix: rate if isinstance(rate, float) else keras.optimizers.schedules.serialize(rate)
                for prefix, rate in self.group_learning_rates.items()
            }
        return config


@keras.saving.register_keras_serializable(package="keras_roadmap")
class TorchAdam(_GroupedDecayOptimizer):
    """Adam / AdamW with exactly the update of ``torch.optim.Adam`` / ``torch.optim.AdamW``.

    For each variable ``p`` with gradient ``g`` at step ``t`` (1-based) and learning rate
    ``lr = learning_rate(t - 1) * factor(p)``::

        coupled:    g <- g + weight_decay * p                  (torch.optim.Adam)
        decoupled:  p <- p - lr * weight_decay * p             (torch.optim.AdamW)
        m <- beta_1 * m + (1 - beta_1) * g
        v <- beta_2 * v + (1 - beta_2) * g**2
        p <- p - lr / (1 - beta_1**t) * m / (sqrt(v / (1 - beta_2**t)) + epsilon)

    Args:
        learning_rate: float or ``keras.optimizers.schedules.LearningRateSchedule``: the base
            learning rate (the backbone's in :func:`build_optimizer`). Default 1e-5.
        beta_1: as in PyTorch (0.9).
        beta_2: as in PyTorch (0.999).
        epsilon: as in PyTorch (1e-8).
        weight_decay: float >= 0 (default 0.0).
        decay_style: ``"coupled"`` (default, L2 in the gradient: ``torch.optim.Adam``, the
            paper's ResNet runs) or ``"decoupled"`` (``torch.optim.AdamW``, the paper's DeiT runs).
        lr_multipliers: dict ``{variable-path prefix: factor}``; a variable whose ``path``
            starts with a prefix uses ``factor * learning_rate`` (first match wins, default 1).
            E.g. ``{"head_": 2.0}`` gives the projection head of a ``keras_roadmap.models``
            embedder twice the backbone's learning rate.
        **kwargs: ``group_learning_rates``, a dict ``{variable-path prefix: float or
            LearningRateSchedule}`` (also for :class:`TorchSGD`): a matching variable uses that
            learning rate (or schedule of the step) instead of the base one, like a PyTorch
            parameter group with its own optimiser and scheduler; it wins over
            ``lr_multipliers``. E.g. the ROADMAP++ proxies: ``{"cluster_proxies":
            CosineAnnealingDecay(10.0, epochs, steps_per_epoch, eta_min=0.1)}`` (see
            ``docs/rank-losses.md``). ``frozen_steps`` (int, 0): for that many first steps the
            variables outside every prefix (the backbone) are not updated and their step count
            waits (SupRank's warm-up; :func:`build_optimizer` ``warmup_epochs``). And the other
            ``keras.optimizers.Optimizer`` arguments (``clipnorm``,
            ``use_ema``, ``gradient_accumulation_steps``, ...). Variables whose name matches
            ``exclude_from_weight_decay`` get no decay in either style.

    Works with ``model.compile`` / ``fit``, mixed precision (the loss-scale wrapper) and
    ``model.save`` / ``keras.models.load_model`` (optimizer variables included).
    """

    def __init__(
        self,
        learning_rate=1e-5,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        weight_decay=0.0,
        decay_style="coupled",
        lr_multipliers=None,
        name="torch_adam",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            decay_style=decay_style,
            lr_multipliers=lr_multipliers,
            name=name,
            **kwargs,
        )
        for arg, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{arg} must be in [0, 1), got {value}.")
        if float(epsilon) < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])

    def _apply_update(self, gradient, variable, lr, index, active):
        dtype = variable.dtype
        step = self._step_count(active, dtype)
        # `ops.cast` of a Python float goes through float32: beta_2 = 0.999 would become
        # 0.99900001, a 6.7e-6 relative error in the first float64 updates.
        bias_correction_1 = 1 - ops.power(ops.convert_to_tensor(self.beta_1, dtype), step)
        bias_correction_2 = 1 - ops.power(ops.convert_to_tensor(self.beta_2, dtype), step)
        m = self._momentums[index]
        v = self._velocities[index]
        if active is None:
            self.assign_add(m, (gradient - m) * (1 - self.beta_1))
            self.assign_add(v, (ops.square(gradient) - v) * (1 - self.beta_2))
            denom = ops.sqrt(v) * ops.rsqrt(bias_correction_2) + self.epsilon
            self.assign_sub(variable, (lr / bias_correction_1) * m / denom)
            return
        new_m = m + (gradient - m) * (1 - self.beta_1)
        new_v = v + (ops.square(gradient) - v) * (1 - self.beta_2)
        denom = ops.sqrt(new_v) * ops.rsqrt(bias_correction_2) + self.epsilon
        self._assign_if(active, variable, variable - (lr / bias_correction_1) * new_m / denom)
        self._assign_if(active, m, new_m)
        self._assign_if(active, v, new_v)

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="keras_roadmap")
class TorchSGD(_GroupedDecayOptimizer):
    """SGD with momentum exactly as ``torch.optim.SGD`` (dampening 0).

    ``g <- g + weight_decay * p`` (coupled, PyTorch's only SGD decay; ``"decoupled"`` is also
    accepted), ``buf <- momentum * buf + g``, then ``p <- p - lr * buf`` (or
    ``p <- p - lr * (g + momentum * buf)`` with ``nesterov=True``). Unlike Keras' SGD the
    learning rate multiplies the buffer at use time, so a schedule change takes effect at once,
    as in PyTorch. Other arguments as in :class:`TorchAdam`; default ``momentum`` 0.9.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        decay_style="coupled",
        lr_multipliers=None,
        name="torch_sgd",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            decay_style=decay_style,
            lr_multipliers=lr_multipliers,
            name=name,
            **kwargs,
        )
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._buffers = self.add_optimizer_variables(var_list, "momentum_buffer")

    def _apply_update(self, gradient, variable, lr, index, active):
        if self.momentum == 0:
            self._assign_if(active, variable, variable - lr * gradient)
            return
        buf = self._buffers[index]
        new_buf = self.momentum * buf + gradient
        direction = gradient + self.momentum * new_buf if self.nesterov else new_buf
        self._assign_if(active, variable, variable - lr * direction)
        self._assign_if(active, buf, new_buf)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


@keras.saving.register_keras_serializable(package="keras_roadmap")
class MultiStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch, driven by the step count.

    ``lr(step) = initial_learning_rate * gamma ** n`` where ``n`` is the number of milestones
    ``m`` with ``step // steps_per_epoch >= m``, so the first step of epoch ``m`` (0-based)
    already uses the decayed rate, as PyTorch does after ``scheduler.step()`` at the end of epoch
    ``m - 1``. (``PiecewiseConstantDecay`` keeps the old value *at* the boundary step and counts in
    steps, hence this class.)

    Args:
        initial_learning_rate: float > 0.
        milestones: increasing epoch indices (ints >= 1), e.g. ``[30, 70]``.
        gamma: multiplicative factor per milestone (default 0.3).
        steps_per_epoch: optimizer steps per epoch (int >= 1).

    Returns (when called with the int step): a float32 scalar tensor.
    """

    def __init__(self, initial_learning_rate, milestones, steps_per_epoch, gamma=0.3, name=None):
        milestones = [int(m) for m in milestones]
        increasing = all(b > a for a, b in zip(milestones, milestones[1:], strict=False))
        if any(m < 1 for m in milestones) or not increasing:
            raise ValueError(f"milestones must be strictly increasing epoch numbers >= 1, got {milestones}.")
        if int(steps_per_epoch) != steps_per_epoch or int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}.")
        if float(initial_learning_rate) <= 0 or float(gamma) <= 0:
            raise ValueError(f"initial_learning_rate and gamma must be > 0, got {initial_learning_rate} and {gamma}.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.milestones = milestones
        self.steps_per_epoch = int(steps_per_epoch)
        self.gamma = float(gamma)
        self.name = name

    def __call__(self, step):
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        passed = ops.zeros((), "float32")
        for milestone in self.milestones:
            passed = passed + ops.cast(ops.greater_equal(epoch, milestone), "float32")
        return self.initial_learning_rate * ops.power(ops.cast(self.gamma, "float32"), passed)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "milestones": list(self.milestones),
            "steps_per_epoch": self.steps_per_epoch,
            "gamma": self.gamma,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="keras_roadmap")
class CosineAnnealingDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``torch.optim.lr_scheduler.CosineAnnealingLR`` stepped once per epoch, driven by the step.

    ``lr(step) = eta_min + (initial_learning_rate - eta_min) * (1 + cos(pi * e / epochs)) / 2``
    with ``e = max(step // steps_per_epoch - delay_epochs, 0)`` (PyTorch's closed form; past
    ``epochs`` it rises again, as PyTorch's does).

    Args:
        initial_learning_rate: float > 0. epochs: ``T_max`` in epochs (int >= 1).
        steps_per_epoch: optimizer steps per epoch (int >= 1). eta_min: float >= 0 (0.0).
        delay_epochs: epochs at the start during which the scheduler is not stepped (0): the
            official SupRank warm-up (``warmup_step``) skips ``scheduler.step()`` in those epochs.
    """

    def __init__(self, initial_learning_rate, epochs, steps_per_epoch, eta_min=0.0, name=None, delay_epochs=0):
        for arg, value, least in (
            ("epochs", epochs, 1),
            ("steps_per_epoch", steps_per_epoch, 1),
            ("delay_epochs", delay_epochs, 0),
        ):
            if isinstance(value, bool) or int(value) != value or int(value) < least:
                raise ValueError(f"{arg} must be an int >= {least}, got {value!r}.")
        if not float(initial_learning_rate) > 0 or float(eta_min) < 0:
            raise ValueError(
                f"initial_learning_rate must be > 0 and eta_min >= 0, got {initial_learning_rate} and {eta_min}."
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.eta_min = float(eta_min)
        self.name = name
        self.delay_epochs = int(delay_epochs)

    def __call__(self, step):
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        epoch = ops.cast(ops.maximum(epoch - self.delay_epochs, 0), "float32")
        cosine = ops.cos(ops.cast(math.pi / self.epochs, "float32") * epoch)
        return self.eta_min + (self.initial_learning_rate - self.eta_min) * (1.0 + cosine) / 2.0

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "eta_min": self.eta_min,
            "name": self.name,
            "delay_epochs": self.delay_epochs,
        }


_OPTIMIZERS = {"adam": "coupled", "adamw": "decoupled", "sgd": "coupled"}


def build_optimizer(
    backbone_lr: float = 1e-5,
    head_lr: float | None = None,
    *,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    decay_style: str | None = None,
    milestones: Sequence[int] = (),
    gamma: float = 0.3,
    steps_per_epoch: int | None = None,
    head_prefix: str = HEAD_PREFIX,
    cosine_epochs: int | None = None,
    eta_min: float = 0.0,
    warmup_epochs: int = 0,
    **kwargs,
) -> keras.optimizers.Optimizer:
    """The paper's optimiser: two learning rates, PyTorch decay semantics, per-epoch MultiStep.

    Args:
        backbone_lr: learning rate of every variable outside the head (float > 0).
        head_lr: learning rate of variables whose path starts with ``head_prefix`` (the
            projection head of ``keras_roadmap.models`` embedders); None = ``backbone_lr``.
            SOP/CUB/INShop in the paper: Adam, backbone 1e-5, head 2e-5.
        optimizer: ``"adam"`` (:class:`TorchAdam`, coupled decay by default), ``"adamw"``
            (:class:`TorchAdam` with ``decay_style="decoupled"``, the DeiT runs) or ``"sgd"``
            (:class:`TorchSGD`).
        weight_decay: float >= 0 (default 0.0).
        decay_style: None = the optimiser's PyTorch meaning (adam/sgd: ``"coupled"``, adamw:
            ``"decoupled"``); giving the other style for ``"adam"``/``"adamw"`` is an error
            (use the other name), so the decay method never changes silently.
        milestones: epochs of a :class:`MultiStepDecay` on the base learning rate when
            non-empty (``steps_per_epoch`` then required); both groups decay together, as
            PyTorch's MultiStepLR does for all groups.
        gamma: the decay factor at each milestone.
        steps_per_epoch: optimizer steps per epoch, to turn milestones into steps.
        head_prefix: variable-path prefix of the head (default ``"head_"``).
        cosine_epochs: instead of milestones, a :class:`CosineAnnealingDecay` with this
            ``T_max`` (epochs) down to ``eta_min`` (SupRank's ``optimizer/sop.yaml``: T_max =
            max_iter, eta_min 0.0). None (default) = no cosine.
        warmup_epochs: SupRank's ``warmup_step`` (0 = none): for this many first epochs the
            backbone (every variable outside the head and the groups) is not updated, and the
            schedules wait (``delay_epochs``), as the official loop skips the backbone
            optimiser's step and ``scheduler.step()`` in them.
        **kwargs: passed to the optimiser (``beta_1``, ``epsilon``, ``momentum``, ``clipnorm``,
            ``group_learning_rates``...).

    Returns:
        A :class:`TorchAdam` or :class:`TorchSGD` for ``model.compile(optimizer=...)``.

    Example:
        >>> opt = build_optimizer(1e-5, 2e-5, weight_decay=1e-4, milestones=[30, 70],
        ...                       steps_per_epoch=100)
    """
    name = str(optimizer).lower()
    if name not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}.")
    natural = _OPTIMIZERS[name]
    if decay_style is None:
        decay_style = natural
    elif name in ("adam", "adamw") and decay_style != natural:
        raise ValueError(
            f"optimizer={optimizer!r} means decay_style={natural!r} (as in PyTorch); for "
            f"{decay_style!r} decay use optimizer={'adamw' if name == 'adam' else 'adam'!r}."
        )
    backbone_lr = float(backbone_lr)
    if backbone_lr <= 0:
        raise ValueError(f"backbone_lr must be > 0, got {backbone_lr}.")
    multipliers = {}
    if head_lr is not None:
        if float(head_lr) < 0:
            raise ValueError(f"head_lr must be >= 0, got {head_lr}.")
        multipliers[head_prefix] = float(head_lr) / backbone_lr
    learning_rate = backbone_lr
    if (milestones or cosine_epochs or warmup_epochs) and steps_per_epoch is None:
        raise ValueError("milestones, cosine_epochs and warmup_epochs are in epochs: pass steps_per_epoch.")
    if milestones and cosine_epochs:
        raise ValueError("give either milestones (MultiStepLR) or cosine_epochs (CosineAnnealingLR), not both.")
    if milestones:
        if warmup_epochs:
            raise ValueError("warmup_epochs delays a cosine schedule (SupRank); it is not defined with milestones.")
        learning_rate = MultiStepDecay(backbone_lr, milestones, steps_per_epoch, gamma=gamma)
    if cosine_epochs:

        def cosine(rate):
            return CosineAnnealingDecay(
                rate, cosine_epochs, steps_per_epoch, eta_min=eta_min, delay_epochs=warmup_epochs
            )

        learning_rate = cosine(backbone_lr)
        if multipliers:
            # Each PyTorch group anneals to the same eta_min, which a factor of the base rate
            # would scale: the head gets a schedule of its own.
            groups = {head_prefix: cosine(float(head_lr)), **(kwargs.pop("group_learning_rates", None) or {})}
            kwargs["group_learning_rates"] = groups
            multipliers = {}
    if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}.")
    cls = TorchSGD if name == "sgd" else TorchAdam
    return cls(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        decay_style=decay_style,
        lr_multipliers=multipliers,
        frozen_steps=int(warmup_epochs) * int(steps_per_epoch or 0),
        **kwargs,
    )
