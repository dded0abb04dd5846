"""Walk TorchScript source (the ``code/`` of a ``torch.jit.save`` archive) as Python ASTs.

Every reference is checked, not only calls: TorchScript lets a local hold a function
(``_0 = __torch__.m.f; _0(x)``), so ``f = torch.from_file`` must be refused where it
is written. Calls of locals are allowed only when every binding of the local is a
function or class of the archive's own code. A method call is allowed when its
receiver is one of the model's objects (typed from the code's own annotations, see
:mod:`modelcheck._tindex`) whose class defines the method, or when the method is an
allowed tensor method.
"""

from __future__ import annotations

import ast
import re

from modelcheck._tindex import CodeIndex, Scope, dotted, function_scope, type_of
from modelcheck.allowlist import (
    PRIM_OPS,
    REFUSED,
    TENSOR_METHODS,
    TORCHSCRIPT_BUILTINS,
    TORCHSCRIPT_REFUSED_BUILTINS,
    TORCHSCRIPT_TYPES,
    is_allowed_aten,
    refusal_reason,
)
from modelcheck.errors import ModelRefusedError

__all__ = ["check_source"]

_FIX = "script or trace a model that uses only tensor operators (modelcheck.allowlist lists them)"
_ROOTS = frozenset({"torch", "ops", "__torch__", "CONSTANTS"})
_LOADED_AT_LOAD = ("__setstate__", "__getstate__")
_REFUSED_STATEMENTS: tuple[type[ast.AST], ...] = (
    ast.Import,
    ast.ImportFrom,
    ast.Global,
    ast.Nonlocal,
    ast.AsyncFunctionDef,
    ast.AsyncFor,
    ast.AsyncWith,
    ast.Try,
    ast.Match,
    *((ast.TryStar,) if hasattr(ast, "TryStar") else ()),
)
_REFUSED_EXPRESSIONS = (ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)
_NOT_IN_ALLOWLIST = "is not on the allow-list of tensor operators"


def check_source(entry: str, tree: ast.Module, index: CodeIndex) -> None:
    """Refuse a code file that reaches beyond the allow-lists.

    Parameters
    ----------
    entry : str
        The file's name in the archive (``"code/__torch__.py"``), for messages.
    tree : ast.Module
    index : CodeIndex
        Every file's definitions.

    Raises
    ------
    ModelRefusedError
        Naming the op and ``entry:line``.
    """
    _Checker(entry, index).module(tree)


class _Checker:
    def __init__(self, entry: str, index: CodeIndex) -> None:
        self.entry = entry
        self.index = index
        self.file_names = index.file_names.get(entry, set())

    def refuse(self, problem: str, *, op: str, node: ast.AST) -> None:
        line = getattr(node, "lineno", None)
        location = f"{self.entry}:{line}" if line is not None else self.entry
        raise ModelRefusedError(problem, op=op, location=location, fix=_FIX)

    # ------------------------------------------------------------------ statements

    def module(self, tree: ast.Module) -> None:
        # __setstate__ runs at load whatever else the code does: name it first.
        for name in _LOADED_AT_LOAD:
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef) and node.name == name:
                    self.refuse(
                        f"the model defines {name}, which {REFUSED[name]}", op=name, node=node
                    )
        for statement in tree.body:
            if isinstance(statement, ast.ClassDef):
                self.class_(statement)
            elif isinstance(statement, ast.FunctionDef):
                self.function(statement, [])
            elif not _is_docstring(statement):
                self.refuse(
                    f"the code runs a {type(statement).__name__} statement at module level",
                    op=type(statement).__name__,
                    node=statement,
                )

    def class_(self, node: ast.ClassDef) -> None:
        if node.decorator_list or node.keywords:
            self.refuse("a class is decorated or has a metaclass", op=node.name, node=node)
        scope = [Scope(frozenset({"__annotations__"}))]
        for base in node.bases:
            self.expr(base, scope)
        for statement in node.body:
            if isinstance(statement, ast.FunctionDef):
                self.function(statement, [])
            elif isinstance(statement, ast.Assign | ast.AnnAssign | ast.Pass):
                self.stmt(statement, scope)
            elif not _is_docstring(statement):
                self.refuse(
                    f"a class body runs a {type(statement).__name__} statement",
                    op=type(statement).__name__,
                    node=statement,
                )

    def function(self, node: ast.FunctionDef, outer: list[Scope]) -> None:
        if node.name in _LOADED_AT_LOAD:
            self.refuse(
                f"the model defines {node.name}, which {REFUSED[node.name]}",
                op=node.name,
                node=node,
            )
        if node.decorator_list:
            self.refuse(f"the function {node.name} is decorated", op=node.name, node=node)
        self.node(node.args, outer)
        if node.returns is not None:
            self.expr(node.returns, outer)
        scopes = [*outer, function_scope(node, outer, self.index)]
        for statement in node.body:
            self.stmt(statement, scopes)

    def stmt(self, node: ast.stmt, scopes: list[Scope]) -> None:
        if isinstance(node, _REFUSED_STATEMENTS):
            self.refuse(
                f"the code uses a {type(node).__name__} statement, which TorchScript does not",
                op=type(node).__name__,
                node=node,
            )
        if isinstance(node, ast.FunctionDef):
            self.function(node, scopes)
        elif isinstance(node, ast.ClassDef):
            self.refuse("the code defines a class inside a function", op=node.name, node=node)
        else:
            for child in ast.iter_child_nodes(node):
                self.node(child, scopes)

    def node(self, node: ast.AST, scopes: list[Scope]) -> None:
        if isinstance(node, ast.stmt):
            self.stmt(node, scopes)
        elif isinstance(node, ast.expr):
            self.expr(node, scopes)
        else:  # arguments, keyword, comprehension, withitem, ...
            for child in ast.iter_child_nodes(node):
                self.node(child, scopes)

    # ------------------------------------------------------------------ expressions

    def expr(self, node: ast.expr, scopes: list[Scope]) -> None:
        if isinstance(node, _REFUSED_EXPRESSIONS):
            self.refuse(
                f"the code uses a {type(node).__name__} expression, which TorchScript does not",
                op=type(node).__name__,
                node=node,
            )
        if isinstance(node, ast.Call):
            self.call(node, scopes)
        elif isinstance(node, ast.Attribute):
            chain = dotted(node)
            if chain is not None and chain[0] in _ROOTS:
                self.root_chain(chain, node, called=False)
            else:
                self.attribute_name(node.attr, node)
                self.expr(node.value, scopes)
        elif isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.name(node, scopes)
        else:
            for child in ast.iter_child_nodes(node):
                self.node(child, scopes)

    def call(self, node: ast.Call, scopes: list[Scope]) -> None:
        function = node.func
        if isinstance(function, ast.Attribute):
            chain = dotted(function)
            if chain is not None and chain[0] in _ROOTS:
                self.root_chain(chain, function, called=True)
            else:
                self.method(function, scopes)
                self.expr(function.value, scopes)
        elif isinstance(function, ast.Name):
            self.called_name(function, scopes)
            if function.id in ("getattr", "hasattr"):
                self.getattr_call(node)
        else:
            self.expr(function, scopes)
            self.refuse(
                "the code calls a computed value, not a named function",
                op=ast.unparse(function)[:80],
                node=node,
            )
        for child in [*node.args, *node.keywords]:
            self.node(child, scopes)

    def getattr_call(self, node: ast.Call) -> None:
        # getattr(x, "name") reaches an attribute by name: check the name as written.
        if len(node.args) < 2 or not (
            isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
        ):
            self.refuse("getattr is called with a computed name", op="getattr", node=node)
        self.attribute_name(node.args[1].value, node)  # type: ignore[attr-defined]

    def attribute_name(self, name: str, node: ast.AST) -> None:
        reason = refusal_reason(name)
        if reason is not None:
            self.refuse(f"the code uses .{name}, which {reason}", op=name, node=node)

    def method(self, node: ast.Attribute, scopes: list[Scope]) -> None:
        name = node.attr
        reason = refusal_reason(name)
        if reason is not None:
            self.refuse(f"the code calls .{name}(), which {reason}", op=name, node=node)
        # Each scope's types already include its enclosing scopes'.
        types = scopes[-1].types if scopes else {}
        owner = type_of(node.value, types, self.index)
        if owner is not None:
            if name == "forward" or name in self.index.classes.get(owner, ()):
                return
            self.refuse(
                f"the code calls .{name}() on a {owner}, whose class defines no such method",
                op=name,
                node=node,
            )
        if name in TENSOR_METHODS:
            return
        self.refuse(
            f"the code calls the method .{name}(), which is neither an allowed tensor "
            "method nor a method of one of the model's objects",
            op=name,
            node=node,
        )

    def root_chain(self, chain: list[str], node: ast.AST, *, called: bool) -> None:
        if self.allowed_chain(chain):
            return
        text = ".".join(chain)
        reason = next((r for r in map(refusal_reason, reversed(chain)) if r), None)
        if reason is None:
            if chain[0] == "ops" and len(chain) > 1 and chain[1] not in ("aten", "prim"):
                reason = "is an operator of a custom namespace, registered by a native library"
            elif chain[0] == "__torch__":
                reason = "the archive's code does not define"
            else:
                reason = _NOT_IN_ALLOWLIST
        verb = "calls" if called else "uses"
        self.refuse(f"the code {verb} {text}, which {reason}", op=text, node=node)

    def allowed_chain(self, chain: list[str]) -> bool:
        root, rest = chain[0], chain[1:]
        if root == "torch":
            return len(rest) == 1 and is_allowed_aten(rest[0])
        if root == "ops":
            if len(rest) != 2:
                return False
            namespace, name = rest
            if namespace == "aten":
                return is_allowed_aten(name)
            return namespace == "prim" and name in PRIM_OPS and refusal_reason(name) is None
        if root == "CONSTANTS":
            return len(rest) == 1 and re.fullmatch(r"c\d+", rest[0]) is not None
        # __torch__: the archive's own classes and functions, their members, and the
        # ``Class.__new__(Class)`` the serialiser writes for context managers.
        text = ".".join(chain)
        if rest[:2] == ["torch", "classes"]:
            return False
        if text in self.index.classes or text in self.index.functions:
            return True
        owner = ".".join(chain[:-1])
        return owner in self.index.classes and (
            chain[-1] == "__new__" or chain[-1] in self.index.classes[owner]
        )

    def name(self, node: ast.Name, scopes: list[Scope]) -> None:
        name = node.id
        if name in TORCHSCRIPT_REFUSED_BUILTINS:
            self.refuse(f"the code uses {name}, which {REFUSED[name]}", op=name, node=node)
        if name in _ROOTS:
            self.refuse(f"the code uses {name} as a value", op=name, node=node)
        if any(name in scope.names for scope in scopes):
            return
        if name in TORCHSCRIPT_BUILTINS or name in TORCHSCRIPT_TYPES or name in self.file_names:
            return
        reason = refusal_reason(name) or (
            "is neither defined by the model's code nor an allowed TorchScript builtin"
        )
        self.refuse(f"the code uses {name}, which {reason}", op=name, node=node)

    def called_name(self, node: ast.Name, scopes: list[Scope]) -> None:
        name = node.id
        if name in TORCHSCRIPT_REFUSED_BUILTINS:
            self.refuse(f"the code calls {name}, which {REFUSED[name]}", op=name, node=node)
        for scope in reversed(scopes):
            if name in scope.names:
                if name in scope.callables:
                    return
                self.refuse(
                    f"the code calls the local value {name}, which is not a function of "
                    "the model's code",
                    op=name,
                    node=node,
                )
        if name in TORCHSCRIPT_BUILTINS or name in self.file_names:
            return
        reason = refusal_reason(name) or (
            "is neither defined by the model's code nor an allowed TorchScript builtin"
        )
        self.refuse(f"the code calls {name}, which {reason}", op=name, node=node)


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
