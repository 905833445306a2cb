"""The hyperparameters of the ROADMAP losses and their presets, each defined once.

SupAP's five parameters and the calibration margins are each taken by several losses and
functions (``SupAPLoss``, ``ROADMAPLoss``, ``supap()``, ``roadmap()``, ...). Their names and
defaults live here only; :func:`with_parameters` writes them into each signature, and the
losses' ``get_config`` reads them back from the same tables.
"""

import functools
import inspect

# SupAP (Ramzi et al. 2021, eq. 4), the paper's SOP / CUB / In-Shop values.
SUPAP_DEFAULTS = {"tau": 0.01, "rho": 100.0, "delta": 0.05, "start": 0.5, "offset": 1.44}
# Named SupAP settings: the paper's iNaturalist-2018 configuration changes two of them.
SUPAP_PRESETS = {"default": {}, "inaturalist": {"start": 0.0, "offset": 1.0}}
# ROADMAP's calibration loss: margins on cosine similarity.
CALIBRATION_DEFAULTS = {"pos_margin": 0.9, "neg_margin": 0.6}


def supap_preset(name):
    """The SupAP keyword arguments of preset ``name`` ("default" or "inaturalist"), a new dict."""
    if name not in SUPAP_PRESETS:
        raise ValueError(f"Unknown SupAP preset {name!r}; choose one of {sorted(SUPAP_PRESETS)}.")
    return dict(SUPAP_PRESETS[name])


def with_parameters(*tables, after):
    """Decorator inserting the parameters of ``tables`` (dicts name -> default) after parameter
    ``after`` of the decorated function.

    The decorated function must end with ``**kwargs``: it receives the inserted parameters
    there, always all of them (defaults filled in). The signature it shows (``help``,
    ``inspect.signature``) and accepts is its own with the inserted parameters, positional or
    keyword, in the tables' order, and without ``**kwargs`` (an unknown keyword is a
    TypeError).
    """
    defaults = {name: default for table in tables for name, default in table.items()}

    def decorate(function):
        own = list(inspect.signature(function).parameters.values())
        if not own or own[-1].kind is not inspect.Parameter.VAR_KEYWORD:
            raise TypeError(f"{function.__qualname__} must end with **kwargs to receive {sorted(defaults)}.")
        own = own[:-1]
        at = [p.name for p in own].index(after) + 1
        inserted = [
            inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d) for n, d in defaults.items()
        ]
        signature = inspect.Signature(own[:at] + inserted + own[at:])

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as err:  # name the callable, as Python does for a plain signature
                raise TypeError(f"{function.__qualname__}(): {err}") from None
            bound.apply_defaults()
            return function(**bound.arguments)

        wrapper.__signature__ = signature
        return wrapper

    return decorate


class SupAPPresets:
    """Mixin of the losses built on SupAP: constructors from a named SupAP preset."""

    @classmethod
    def from_preset(cls, name, **kwargs):
        """The loss with SupAP preset ``name`` (see ``SUPAP_PRESETS``); ``kwargs`` override it."""
        return cls(**{**supap_preset(name), **kwargs})

    @classmethod
    def inaturalist(cls, **kwargs):
        """The loss with the paper's iNaturalist-2018 SupAP settings (``start=0.0, offset=1.0``)."""
        return cls.from_preset("inaturalist", **kwargs)
