"""Command-line flags of the analysis parameters, generated from `AnalysisParams`' fields.

One place turns each field into a flag (``k`` -> ``--k``, ``ignore_identical`` ->
``--ignore-identical``), with its choices, type and help taken from the model, so that
the local commands (``analyze``, ``study``) and the remote ``submit`` cannot drift from
it. Local commands show and apply the model's defaults; remote ``submit`` sends only the
flags the user gave, so that the service decides the defaults.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Collection
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from api_schemas import AnalysisParams

__all__ = ["add_analysis_flags", "field_choices", "given_analysis_params"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fields(model: type[BaseModel] | None) -> dict[str, FieldInfo]:
    # Resolved at each call, not bound as a default: whatever AnalysisParams is when the
    # parser is built (a test's variant included) is what the flags show.
    return (AnalysisParams if model is None else model).model_fields


def _value_type(annotation: Any) -> Any:
    """The annotation without ``None`` (``float | None`` -> ``float``)."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def field_choices(name: str, *, model: type[BaseModel] | None = None) -> list[Any]:
    """The values a ``Literal`` field of the analysis parameters allows.

    For a command's own flag that takes the same values as a field (a study's
    ``--device`` places its training too), so that the choices are not copied.

    Parameters
    ----------
    name : str
        The field, e.g. ``"device"``.
    model : pydantic model class, optional
        The parameters' model (default: ``AnalysisParams``).

    Returns
    -------
    list
        The allowed values, in the order the model declares them.
    """
    value_type = _value_type(_fields(model)[name].annotation)
    if get_origin(value_type) is not Literal:
        raise TypeError(f"analysis parameter {name!r} is not a choice of values")
    return list(get_args(value_type))


def add_analysis_flags(
    parser: argparse.ArgumentParser,
    *,
    with_defaults: bool,
    exclude: Collection[str] = (),
    model: type[BaseModel] | None = None,
) -> None:
    """Add one flag per field of ``model`` (the analysis parameters) to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    with_defaults : bool
        True for a local command: each flag defaults to the field's default, which its
        help shows. False for a request to the service: a flag not given is absent from
        the parsed namespace (see :func:`given_analysis_params`).
    exclude : collection of str
        Fields the command sets otherwise (a study's ``--seed`` seeds its training).
    model : pydantic model class, optional
        The parameters' model (default: ``AnalysisParams``, looked up when called; tests
        pass a variant with other defaults).
    """
    for name, field in _fields(model).items():
        if name in exclude:
            continue
        value_type = _value_type(field.annotation)
        options: dict[str, Any] = {"dest": name}
        help_text = (field.description or "").rstrip(".")
        if get_origin(value_type) is list:
            # A list of choices (``baselines``): the flag once per item.
            (item,) = get_args(value_type)
            if get_origin(item) is Literal:
                options["choices"] = list(get_args(item))
            else:
                options["type"] = item
            options["action"] = "append"
            # argparse copies a list default before appending, so the field's stays [].
            options["default"] = list(field.default) if with_defaults else argparse.SUPPRESS
            help_text += "; repeat the flag for several (default: none)"
            parser.add_argument(_flag(name), help=help_text, **options)
            continue
        if get_origin(value_type) is Literal:
            options["choices"] = field_choices(name, model=model)
        elif value_type is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = value_type
            options["metavar"] = name.upper()
        if with_defaults:
            options["default"] = field.default
            help_text += f" (default: {field.default})"
        else:
            options["default"] = argparse.SUPPRESS
            help_text += " (default: the service's)"
        parser.add_argument(_flag(name), help=help_text, **options)


def given_analysis_params(
    args: argparse.Namespace,
    *,
    exclude: Collection[str] = (),
    model: type[BaseModel] | None = None,
) -> dict[str, Any]:
    """The analysis parameters present in ``args`` (less ``exclude``): with
    ``with_defaults=False``, exactly the flags the user gave."""
    present = vars(args)
    return {
        name: present[name] for name in _fields(model) if name in present and name not in exclude
    }
