"""A user's function as a syntax tree, and a syntax tree back as a function that keeps the
user's globals, defaults and closure.

Both the front end (the normalized function) and code generation (the cascaded and compiled
functions) turn a rewritten ``ast.FunctionDef`` into a real function that must behave as if the
user had written it in place: the same globals, defaults and closure cells, plus a few extra
cells of willow's own (bound fitted objects, the runtime helpers). Python can only create a
function with closure cells by compiling it inside an enclosing "factory" function, so this
module does that once, for both.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import textwrap
import types
from collections.abc import Callable, Mapping
from typing import Any

import astor

from willow.errors import UnsupportedPipelineError

__all__ = ["function_source", "parse_function", "function_from_tree"]


def function_source(fn: Callable) -> tuple[str, str, int]:
    """``fn``'s source text, its file and the line its ``def`` starts on; refuses a function
    whose source cannot be read (typed into a prompt, built with exec, a lambda or builtin)."""
    try:
        lines, first = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn) or "<unknown>"
    except (OSError, TypeError) as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise UnsupportedPipelineError(
            f"Cannot read the source of {name}: {exc}. willow traces the function's source, so it "
            "must be defined in a file (not typed into an interactive prompt, built with exec, or "
            "be a lambda or builtin). Pass strict=False to willow.optimize to run this function "
            "unoptimized (with a warning)."
        ) from exc
    return "".join(lines), filename, first


def parse_function(fn: Callable) -> tuple[ast.FunctionDef, str]:
    """``fn``'s ``def`` as a syntax tree whose line numbers are those of its file, and the file."""
    source, filename, first = function_source(fn)
    tree = ast.parse(textwrap.dedent(source))
    ast.increment_lineno(tree, first - 1)
    func = tree.body[0] if tree.body else None
    if not isinstance(func, ast.FunctionDef):
        raise UnsupportedPipelineError(
            f"{filename}:{first}: willow.optimize needs a plain `def` function (not async, a class "
            "or a lambda). Pass strict=False to willow.optimize to run this function unoptimized "
            "(with a warning)."
        )
    func.decorator_list = []
    return func, filename


def function_from_tree(
    func: ast.FunctionDef,
    original: Callable,
    extra_cells: Mapping[str, Any],
    filename: str,
    *,
    register_source: bool = False,
) -> Callable:
    """Compile ``func`` into a function with ``original``'s globals, defaults, closure and
    metadata, where each name in ``extra_cells`` is a closure cell holding its object.

    With ``register_source`` the factory is rendered with astor and registered in ``linecache``
    under ``filename``, so tracebacks and debuggers show the generated source; otherwise the
    tree is compiled as it is, keeping the line numbers it carries (the user's own lines).
    """
    freevars = list(original.__code__.co_freevars)
    factory = ast.FunctionDef(
        name="__willow_factory__",
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg=n) for n in dict.fromkeys([*extra_cells, *freevars])],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        ),
        body=[func, ast.Return(value=ast.Name(id=func.name, ctx=ast.Load()))],
        decorator_list=[],
        returns=None,
        type_comment=None,
        type_params=[],
    )
    ast.copy_location(factory, func)
    module = ast.Module(body=[factory], type_ignores=[])
    ast.fix_missing_locations(module)
    if register_source:
        source = astor.to_source(module)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        code = compile(source, filename, "exec")
    else:
        code = compile(module, filename, "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    inner = next(
        c
        for c in namespace["__willow_factory__"].__code__.co_consts
        if isinstance(c, types.CodeType) and c.co_name == func.name
    )
    cells = []
    for name in inner.co_freevars:
        if name in extra_cells:
            cells.append(types.CellType(extra_cells[name]))
        else:
            cells.append(original.__closure__[freevars.index(name)])  # type: ignore[index]
    function = types.FunctionType(
        inner, original.__globals__, original.__name__, original.__defaults__, tuple(cells)
    )
    function.__kwdefaults__ = original.__kwdefaults__
    function.__qualname__ = original.__qualname__
    function.__doc__ = original.__doc__
    function.__module__ = original.__module__
    return function
