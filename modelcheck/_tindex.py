"""What a TorchScript archive's code defines, and what each function's locals hold.

TorchScript source is fully annotated: each class declares its attributes' types
(``lin : __torch__.torch.nn.modules.linear.Linear``, or
``__annotations__["0"] = __torch__...`` for ``Sequential`` children) and each method
its ``self`` type. That is enough to tell, for ``(lin).forward(x, )``, that ``lin`` is
one of the model's objects and ``forward`` one of its class's methods, without taking
an archive's word that a method name means what it says: a class may define a method
called ``_indices``, but calling it on a tensor is calling the tensor's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field

from modelcheck.errors import ModelRefusedError

__all__ = ["CodeIndex", "Scope", "dotted", "function_scope", "index_source", "type_of"]

_FIX = "script or trace a model that uses only tensor operators (modelcheck.allowlist lists them)"


@dataclass
class CodeIndex:
    """What the archive's code defines, by qualified name.

    Attributes
    ----------
    classes : dict of str to set of str
        ``"__torch__.torch.nn.modules.linear.Linear"`` to the names its body defines
        (methods and class attributes).
    attribute_types : dict of str to dict of str to str
        Each class's attributes whose declared type is a class of the archive.
    functions : set of str
        Qualified names of top-level functions.
    file_names : dict of str to set of str
        Each code entry's top-level names.
    """

    classes: dict[str, set[str]] = field(default_factory=dict)
    attribute_types: dict[str, dict[str, str]] = field(default_factory=dict)
    functions: set[str] = field(default_factory=set)
    file_names: dict[str, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scope:
    """A function's locals: all names, those that may be called, and known types."""

    names: frozenset[str]
    callables: frozenset[str] = frozenset()
    types: dict[str, str] = field(default_factory=dict)


def dotted(node: ast.expr) -> list[str] | None:
    """``torch.nn.f`` as ``["torch", "nn", "f"]``; None unless names all the way down."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _archive_type(annotation: ast.expr | None) -> str | None:
    chain = dotted(annotation) if annotation is not None else None
    return ".".join(chain) if chain and chain[0] == "__torch__" else None


def _qualifier(entry: str) -> str:
    # code/__torch__/torch/nn/functional.py -> __torch__.torch.nn.functional
    return entry.removeprefix("code/").removesuffix(".py").replace("/", ".")


def index_source(trees: dict[str, ast.Module]) -> CodeIndex:
    """Index the classes and functions the archive's code files define.

    Parameters
    ----------
    trees : dict of str to ast.Module
        Each ``code/...py`` entry's parsed source.

    Returns
    -------
    CodeIndex
    """
    index = CodeIndex()
    for entry, tree in trees.items():
        qualifier = _qualifier(entry)
        parts = qualifier.split(".")
        if parts[0] != "__torch__" or parts[1:3] == ["torch", "classes"]:
            raise ModelRefusedError(
                "a code file lies outside the model's own namespace __torch__",
                op=qualifier,
                location=entry,
                fix=_FIX,
            )
        names = index.file_names.setdefault(entry, set())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                name = f"{qualifier}.{node.name}"
                index.classes.setdefault(name, set()).update(_members(node))
                index.attribute_types.setdefault(name, {}).update(_attribute_types(node))
                names.add(node.name)
            elif isinstance(node, ast.FunctionDef):
                index.functions.add(f"{qualifier}.{node.name}")
                names.add(node.name)
    return index


def _members(node: ast.ClassDef) -> Iterator[str]:
    for statement in node.body:
        if isinstance(statement, ast.FunctionDef):
            yield statement.name
        elif isinstance(statement, ast.Assign):
            yield from (t.id for t in statement.targets if isinstance(t, ast.Name))
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            yield statement.target.id


def _attribute_types(node: ast.ClassDef) -> Iterator[tuple[str, str]]:
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            kind = _archive_type(statement.annotation)
            if kind:
                yield statement.target.id, kind
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            # __annotations__["0"] = __torch__...: Sequential and ModuleList children.
            target = statement.targets[0]
            kind = _archive_type(statement.value)
            if (
                kind
                and isinstance(target, ast.Subscript)
                and isinstance(target.value, ast.Name)
                and target.value.id == "__annotations__"
                and isinstance(target.slice, ast.Constant)
                and isinstance(target.slice.value, str)
            ):
                yield target.slice.value, kind


def type_of(node: ast.expr, types: dict[str, str], index: CodeIndex) -> str | None:
    """The archive class ``node`` evaluates to an instance of, when the code says so.

    Parameters
    ----------
    node : ast.expr
    types : dict of str to str
        Known types of the locals in scope.
    index : CodeIndex

    Returns
    -------
    str or None
        A qualified class name, or None when unknown (a tensor, a number, ...).
    """
    if isinstance(node, ast.Name):
        return types.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = type_of(node.value, types, index)
        return index.attribute_types.get(owner, {}).get(node.attr) if owner else None
    if not isinstance(node, ast.Call):
        return None
    function, arguments = node.func, node.args
    if isinstance(function, ast.Name) and len(arguments) == 2:
        if function.id == "getattr" and isinstance(arguments[1], ast.Constant):
            owner = type_of(arguments[0], types, index)
            attributes = index.attribute_types.get(owner, {}) if owner else {}
            return attributes.get(str(arguments[1].value))
        if function.id == "unchecked_cast":
            return _archive_type(arguments[0])
        return None
    chain = dotted(function)
    if chain and chain[0] == "__torch__":
        # Class(...) builds one; Class.__new__(Class) too (context managers).
        name = ".".join(chain[:-1] if chain[-1] == "__new__" else chain)
        return name if name in index.classes else None
    return None


def _scope_nodes(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every node of a function body, not entering nested functions or classes."""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def function_scope(function: ast.FunctionDef, outer: list[Scope], index: CodeIndex) -> Scope:
    """The locals of ``function``: names, callable ones, and archive-class types.

    A local may be called when it is no parameter and each of its bindings is a plain
    ``name = <archive function or class>`` or a nested ``def``. A local has a type when
    every binding is a plain assignment of a value of that one type.

    Parameters
    ----------
    function : ast.FunctionDef
    outer : list of Scope
        Enclosing functions' scopes (a nested def reads their locals).
    index : CodeIndex

    Returns
    -------
    Scope
    """
    arguments = function.args
    parameters = [
        *arguments.posonlyargs,
        *arguments.args,
        *arguments.kwonlyargs,
        *(a for a in (arguments.vararg, arguments.kwarg) if a is not None),
    ]
    nodes = list(_scope_nodes(function.body))
    assigned = {
        id(node.targets[0]): node.value
        for node in nodes
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    }
    # Each binding of each local: the assigned value, or None (a loop or tuple
    # target, an augmented assignment, ...); a nested def is callable, not a value.
    bindings: dict[str, list[ast.expr | None]] = {}
    nested: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.FunctionDef):
            nested.add(node.name)
        elif isinstance(node, ast.ClassDef):
            bindings.setdefault(node.name, []).append(None)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bindings.setdefault(node.id, []).append(assigned.get(id(node)))
    parameter_names = {a.arg for a in parameters}
    callables = {
        name
        for name in set(bindings) | nested
        if name not in parameter_names
        and all(
            value is not None and (dotted(value) or [""])[0] == "__torch__"
            for value in bindings.get(name, [])
        )
    }
    types: dict[str, str] = {}
    for scope in outer:
        types.update(scope.types)
    for parameter in parameters:
        types.pop(parameter.arg, None)
        kind = _archive_type(parameter.annotation)
        if kind:
            types[parameter.arg] = kind
    for name in set(bindings) | nested:
        types.pop(name, None)
    # Locals typed from other locals: iterate until nothing changes.
    for _ in range(len(bindings) + 1):
        changed = False
        for name, values in bindings.items():
            if name in parameter_names or name in types or None in values:
                continue
            kinds = {type_of(value, types, index) for value in values}  # type: ignore[arg-type]
            if len(kinds) == 1 and None not in kinds:
                types[name] = kinds.pop()  # type: ignore[assignment]
                changed = True
        if not changed:
            break
    names = frozenset(parameter_names | set(bindings) | nested)
    return Scope(names, frozenset(callables), types)
