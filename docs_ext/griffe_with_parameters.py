"""Griffe extension for the docs build: shows the signatures `with_parameters` builds.

`keras_roadmap.losses.parameters.with_parameters` inserts the SupAP / calibration parameters into
a function's signature at import time; griffe reads the source, where the function ends with
`**kwargs`. This extension applies the same insertion to griffe's model, so the API reference
shows (and checks the docstrings against) the signature users call.
"""

import ast
import importlib.util
import pathlib

import griffe

_PARAMETERS_FILE = pathlib.Path(__file__).resolve().parents[1] / "keras_roadmap" / "losses" / "parameters.py"


def _tables():
    # Loaded from its file: importing keras_roadmap.losses would import Keras.
    spec = importlib.util.spec_from_file_location("_roadmap_parameters", _PARAMETERS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WithParameters(griffe.Extension):
    def __init__(self):
        super().__init__()
        self._module = _tables()

    def on_function_instance(self, *, func, **kwargs):
        for decorator in func.decorators:
            call = ast.parse(str(decorator.value), mode="eval").body
            if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "with_parameters"):
                continue
            inserted = [
                griffe.Parameter(name, kind=griffe.ParameterKind.positional_or_keyword, default=repr(default))
                for table in call.args
                for name, default in getattr(self._module, table.id).items()
            ]
            after = next(keyword.value.value for keyword in call.keywords if keyword.arg == "after")
            own = [p for p in func.parameters if p.kind is not griffe.ParameterKind.var_keyword]
            at = [p.name for p in own].index(after) + 1
            func.parameters = griffe.Parameters(*own[:at], *inserted, *own[at:])
