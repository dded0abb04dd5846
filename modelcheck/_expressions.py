"""Text a torch.export program holds that torch evaluates as Python when loading it.

``torch.export.load`` reads every symbolic size (``expr_str``, written by
``sympy.srepr``: ``Mul(Integer(2), Symbol('s77', positive=True, integer=True))``) with
``sympy.sympify``, which runs it through ``eval``; ``ExportedProgram.module()`` pastes
each ``guards_code`` string into Python source and ``exec``-s it. Both are therefore
parsed here and allowed only when made of the few harmless pieces torch writes.
"""

from __future__ import annotations

import ast
import re

from modelcheck.allowlist import SYMPY_NAMES
from modelcheck.errors import ModelRefusedError

__all__ = ["check_guard", "check_sympy_expression"]

_FIX = "export the program again with torch.export and save it with torch.export.save"
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+")
# Strings sympy reads as data, not code: a symbol's name, a number's digits.
_STRING_ARGUMENT = re.compile(r"[A-Za-z0-9_.+\-]*")
_STRING_FUNCTIONS = frozenset({"Symbol", "Integer", "Float"})
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_UNARY = (ast.USub, ast.UAdd, ast.Not)
_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_MATH = frozenset({"floor", "ceil", "trunc", "sqrt"})
# Contexts and operator tokens; the operators are checked on their expression.
_GRAMMAR = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)


def _parse(text: object, *, what: str, limit: int, location: str) -> tuple[str, ast.Expression]:
    if not isinstance(text, str) or len(text) > limit or "#" in text:
        raise ModelRefusedError(
            f"the program holds a {what} that is not a short expression",
            op=str(text)[:80],
            location=location,
            fix=_FIX,
        )
    try:
        return text, ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ModelRefusedError(
            f"the program holds a {what} that is not a valid expression",
            op=text[:80],
            location=location,
            fix=_FIX,
        ) from None


def _refuse(what: str, text: str, piece: ast.AST, location: str) -> None:
    raise ModelRefusedError(
        f"the program holds a {what} that torch would run as Python and that uses "
        f"{ast.unparse(piece)[:60]!r}, which a size expression does not",
        op=text[:80],
        location=location,
        fix=_FIX,
    )


def check_sympy_expression(text: object, *, location: str, limit: int = 10_000) -> None:
    """Refuse a symbolic size that is anything but sympy numbers, symbols and arithmetic.

    Parameters
    ----------
    text : object
        The ``expr_str`` value.
    location : str
        Where it is, for messages.
    limit : int
        Most characters allowed.
    """
    what = "symbolic size"
    text, tree = _parse(text, what=what, limit=limit, location=location)
    stack: list[ast.AST] = [tree.body]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call):
            function = node.func
            if not isinstance(function, ast.Name) or function.id not in SYMPY_NAMES:
                _refuse(what, text, node, location)
            arguments = list(node.args)
            # Only a symbol's name or a number's digits may be a string: other sympy
            # functions sympify string arguments, that is, evaluate them.
            if (
                arguments
                and isinstance(arguments[0], ast.Constant)
                and isinstance(arguments[0].value, str)
            ):
                if function.id not in _STRING_FUNCTIONS or not _STRING_ARGUMENT.fullmatch(
                    arguments[0].value
                ):
                    _refuse(what, text, node, location)
                arguments = arguments[1:]
            for keyword in node.keywords:
                value = keyword.value
                if keyword.arg is None or not (
                    isinstance(value, ast.Constant) and not isinstance(value.value, str)
                ):
                    _refuse(what, text, node, location)
            stack.extend(arguments)
        elif isinstance(node, ast.Name):
            if node.id not in SYMPY_NAMES and not _SYMBOL_NAME.fullmatch(node.id):
                _refuse(what, text, node, location)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str | bytes):
                _refuse(what, text, node, location)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, _ARITHMETIC):
            stack.extend((node.left, node.right))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
            stack.append(node.operand)
        elif isinstance(node, ast.Compare) and all(isinstance(o, _COMPARE) for o in node.ops):
            stack.extend((node.left, *node.comparators))
        elif isinstance(node, ast.BoolOp | ast.Tuple):
            stack.extend(node.values if isinstance(node, ast.BoolOp) else node.elts)
        else:
            _refuse(what, text, node, location)


def check_guard(text: object, *, location: str, limit: int = 10_000) -> None:
    """Refuse a guard that is anything but arithmetic on input sizes.

    A guard reads like ``L['x'].size()[0] <= 64``: the inputs (``L[...]``), their
    ``size``/``stride``/``dim``/``numel``, numbers, arithmetic, comparisons and
    ``math.floor``-like rounding.

    Parameters
    ----------
    text : object
        One ``guards_code`` string.
    location : str
        Where it is, for messages.
    limit : int
        Most characters allowed.
    """
    what = "shape guard"
    text, tree = _parse(text, what=what, limit=limit, location=location)
    if "\n" in text or "\r" in text:
        _refuse(what, text, tree.body, location)
    for node in ast.walk(tree.body):
        if isinstance(node, ast.Call):
            function = node.func
            chain = ast.unparse(function)
            allowed = isinstance(function, ast.Attribute) and (
                function.attr in _GUARD_METHODS
                or (chain.startswith("math.") and function.attr in _GUARD_MATH)
            )
            if not allowed or node.keywords:
                _refuse(what, text, node, location)
        elif isinstance(node, ast.Attribute):
            if node.attr not in _GUARD_METHODS | _GUARD_MATH:
                _refuse(what, text, node, location)
        elif isinstance(node, ast.Name):
            if node.id not in ("L", "math"):
                _refuse(what, text, node, location)
        elif isinstance(node, ast.Constant):
            # Guard text is pasted inside a double-quoted string too: no quotes in it.
            if isinstance(node.value, bytes) or (
                isinstance(node.value, str) and not re.fullmatch(r"\w*", node.value)
            ):
                _refuse(what, text, node, location)
        elif isinstance(node, ast.BinOp | ast.UnaryOp | ast.BoolOp | ast.Compare):
            operators = getattr(node, "ops", None) or [node.op]  # type: ignore[attr-defined]
            if not all(
                isinstance(o, (*_ARITHMETIC, *_UNARY, *_COMPARE, ast.And, ast.Or))
                for o in operators
            ):
                _refuse(what, text, node, location)
        elif not isinstance(node, (ast.Subscript, ast.Tuple, ast.Slice, *_GRAMMAR)):
            _refuse(what, text, node, location)
