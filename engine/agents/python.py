"""The `python` agent kind: call a Python function.

```yaml
agents: {py: {kind: python}}
steps:
  tidy: {agent: py, with: {call: "mypkg.jobs:tidy", args: {days: 7}}}
```

`call` names the function as `package.module:function` (an attribute path such as
`module:Class.method` works too). It is called with `**args`. Coroutine functions are awaited on
the event loop; plain functions run in a worker thread (`asyncio.to_thread`) so the loop never
blocks. A function that declares a parameter named `ctx` also receives the `StepCall`.

The return value is the step output and must be JSON-serialisable. An exception raised by the
function becomes `StepError(INTERNAL, retryable=True)`; a `StepError` it raises passes through.

Timeouts and cancellation: the runner cancels the task. A coroutine function sees the
`CancelledError`; a plain function running in a thread cannot be interrupted, it finishes in the
background and its result is dropped.

Undo handlers for python steps (`undo: {handler: NAME}`) are registered here with
`@register_undo_handler(NAME)`, looked up with `get_undo_handler(NAME)` and run with
`run_undo_handler(...)`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from engine.agents.base import Agent, StepCall, register
from engine.errors import ErrorClass, StepError

_PARAMS = ("call", "args")

UndoHandler = Callable[[dict[str, Any], Any, Any], Any]
"""`handler(params, output, before)`, sync or async; its return value is the undo's result."""

_F = TypeVar("_F", bound=Callable[..., Any])
_UNDO_HANDLERS: dict[str, UndoHandler] = {}


# --------------------------------------------------------------------------- targets


def target_problem(target: Any) -> str | None:
    """Why `target` is not of the form `package.module:function`, or None if it is."""
    if not isinstance(target, str) or not target:
        return "must be a string like 'package.module:function'"
    module, sep, attr = target.partition(":")
    if (
        not sep
        or not module
        or not attr
        or not all(part.isidentifier() for part in module.split("."))
        or not all(part.isidentifier() for part in attr.split("."))
    ):
        return f"'{target}' is not of the form 'package.module:function'"
    return None


def resolve_target(target: str) -> Callable[..., Any]:
    """Import `package.module:function` and return the callable.

    Raises `StepError(VALIDATION)` naming the target when it is ill-formed, cannot be imported,
    lacks the attribute or is not callable. May import a module: call it from a thread when the
    module is not loaded yet (see `PythonAgent.call`).
    """
    problem = target_problem(target)
    if problem is not None:
        raise StepError(f"call: {problem}", ErrorClass.VALIDATION)
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise StepError(
            f"cannot import module '{module_name}' for '{target}': {e}", ErrorClass.VALIDATION
        ) from e
    except Exception as e:  # the module itself failed while being imported
        raise StepError(
            f"importing '{module_name}' for '{target}' failed: {_describe(e)}",
            ErrorClass.VALIDATION,
        ) from e
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise StepError(
                f"'{target}': '{part}' not found in {getattr(obj, '__name__', module_name)}",
                ErrorClass.VALIDATION,
            ) from e
    if not callable(obj):
        raise StepError(f"'{target}' is not callable ({type(obj).__name__})", ErrorClass.VALIDATION)
    return obj


async def _aresolve(target: str) -> Callable[..., Any]:
    """`resolve_target` that imports a not-yet-loaded module in a thread (imports can be slow)."""
    if target.partition(":")[0] in sys.modules:
        return resolve_target(target)
    return await asyncio.to_thread(resolve_target, target)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    # a callable object whose __call__ is a coroutine function
    return inspect.iscoroutinefunction(type(func).__call__)


def _wants_ctx(sig: inspect.Signature | None) -> bool:
    if sig is None:
        return False
    param = sig.parameters.get("ctx")
    return param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have none
        return None


_SCALARS = (str, int, bool, type(None))


def _plain(value: Any, depth: int = 0) -> bool:
    """Cheap check that `value` is already JSON data (small dicts/lists of scalars)."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if depth > 3:
        return False
    if type(value) is dict:
        return len(value) <= 64 and all(
            type(k) is str and _plain(v, depth + 1) for k, v in value.items()
        )
    if type(value) is list:
        return len(value) <= 64 and all(_plain(v, depth + 1) for v in value)
    return False


def to_json_value(value: Any, what: str) -> Any:
    """`value` as plain JSON data (tuples become lists); StepError(VALIDATION) if it is not JSON."""
    if (type(value) is dict and not value) or _plain(value):
        return value
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise StepError(
            f"{what} returned a value that is not JSON-serialisable: {e}",
            ErrorClass.VALIDATION,
            output=None,
        ) from e


async def invoke(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call `func(*args, **kwargs)`: await coroutine functions, run plain ones in a thread.

    A plain function that returns an awaitable (e.g. a sync wrapper around a coroutine function)
    has that awaitable awaited on the loop. Exceptions propagate unchanged.
    """
    if _is_async(func):
        result = func(*args, **kwargs)
    else:
        result = await asyncio.to_thread(func, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


# --------------------------------------------------------------------------- the agent


@register("python")
class PythonAgent(Agent):
    """Calls `with.call` with `**with.args`; the return value is the step output."""

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[str]:
        return _problems(params, allow_expressions=True)

    def operation(self, params: dict[str, Any]) -> str:
        target = params.get("call")
        return target if isinstance(target, str) and target else self.kind

    async def call(self, call: StepCall) -> Any:
        params = call.params
        call.operation = self.operation(params)
        target = params.get("call") if isinstance(params, dict) else None
        resolved = _RESOLVED.get(target) if isinstance(target, str) else None
        if resolved is None or not params.keys() <= _PARAM_SET:
            problems = _problems(params, allow_expressions=False)
            if problems:
                raise StepError("; ".join(problems), ErrorClass.VALIDATION)
            resolved = await _Resolved.load(target)
        args = params.get("args") or {}
        if not isinstance(args, dict):
            raise StepError(
                "args: must be a mapping of argument names to values", ErrorClass.VALIDATION
            )
        kwargs = dict(args)
        if resolved.wants_ctx and "ctx" not in kwargs:
            kwargs["ctx"] = call
        resolved.check_args(kwargs)
        try:
            if resolved.is_async:
                result = await resolved.func(**kwargs)
            else:
                result = await invoke(resolved.func, **kwargs)
        except StepError:
            raise
        except (Exception, SystemExit) as e:
            raise StepError(_describe(e), ErrorClass.INTERNAL, retryable=True) from e
        return to_json_value(result, f"'{target}'")


class _Resolved:
    """A resolved call target with what each call needs, computed once per target."""

    __slots__ = ("bound_ok", "func", "is_async", "sig", "target", "wants_ctx")

    def __init__(self, target: str, func: Callable[..., Any]):
        self.target = target
        self.func = func
        self.sig = _signature(func)
        self.is_async = _is_async(func)
        self.wants_ctx = _wants_ctx(self.sig)
        self.bound_ok: set[frozenset[str]] = set()

    @classmethod
    async def load(cls, target: str) -> _Resolved:
        resolved = cls(target, await _aresolve(target))
        _RESOLVED[target] = resolved
        return resolved

    def check_args(self, kwargs: dict[str, Any]) -> None:
        """Argument names against the signature (remembered: names decide, not values)."""
        if self.sig is None:
            return
        names = frozenset(kwargs)
        if names in self.bound_ok:
            return
        try:
            self.sig.bind(**kwargs)
        except TypeError as e:
            raise StepError(f"'{self.target}': bad args: {e}", ErrorClass.VALIDATION) from e
        self.bound_ok.add(names)


_RESOLVED: dict[str, _Resolved] = {}
_PARAM_SET = frozenset(_PARAMS)


def _problems(params: Any, *, allow_expressions: bool) -> list[str]:
    if not isinstance(params, dict):
        return ["with: must be a mapping with `call` and `args`"]
    problems = [
        f"{key}: unknown parameter for a python step (use call, args)"
        for key in params
        if key not in _PARAMS
    ]
    target = params.get("call")
    if target is None:
        problems.append("call: required, e.g. 'package.module:function'")
    elif not (allow_expressions and isinstance(target, str) and "${{" in target):
        problem = target_problem(target)
        if problem is not None:
            problems.append(f"call: {problem}")
    args = params.get("args")
    if args is not None and not (allow_expressions and isinstance(args, str) and "${{" in args):
        if not isinstance(args, dict):
            problems.append("args: must be a mapping of argument names to values")
        else:
            bad = [k for k in args if not (isinstance(k, str) and k)]
            if bad:
                problems.append(
                    f"args: argument names must be strings: {', '.join(map(repr, bad))}"
                )
    return problems


# --------------------------------------------------------------------------- undo handlers


def register_undo_handler(name: str) -> Callable[[_F], _F]:
    """Decorator: make `func(params, output, before)` the undo handler called `name`.

    `params` is the step's rendered `with`, `output` its output, `before` the captured
    before-state (or None). Sync handlers run in a thread, async ones on the loop. Registering a
    name again replaces the previous handler.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("an undo handler needs a non-empty name")

    def deco(func: _F) -> _F:
        _UNDO_HANDLERS[name] = func
        return func

    return deco


def get_undo_handler(name: str) -> UndoHandler:
    """The handler registered as `name`.

    A name of the form `package.module:function` that is not registered is imported, so a
    process that did not import the handler's module (e.g. `flowdeck undo`) still finds it;
    importing may register further handlers. Raises KeyError when there is no such handler.
    """
    handler = _UNDO_HANDLERS.get(name)
    if handler is not None:
        return handler
    if target_problem(name) is None:
        try:
            handler = resolve_target(name)
        except StepError as e:
            raise KeyError(f"unknown undo handler '{name}': {e}") from e
        return _UNDO_HANDLERS.get(name, handler)
    known = ", ".join(sorted(_UNDO_HANDLERS)) or "none registered"
    raise KeyError(f"unknown undo handler '{name}' (known: {known})")


def undo_handler_names() -> list[str]:
    """Names of the registered undo handlers."""
    return sorted(_UNDO_HANDLERS)


async def run_undo_handler(name: str, params: dict[str, Any], output: Any, before: Any) -> Any:
    """Look up and run the undo handler `name`; returns its result as JSON data.

    Unknown handler -> StepError(VALIDATION); an exception from the handler ->
    StepError(INTERNAL, retryable=True); a StepError it raises passes through.
    """
    try:
        handler = (
            get_undo_handler(name)
            if name in _UNDO_HANDLERS or target_problem(name) is not None
            else await asyncio.to_thread(get_undo_handler, name)
        )
    except KeyError as e:
        raise StepError(str(e.args[0]), ErrorClass.VALIDATION) from e
    try:
        result = await invoke(handler, params, output, before)
    except StepError:
        raise
    except (Exception, SystemExit) as e:
        raise StepError(_describe(e), ErrorClass.INTERNAL, retryable=True) from e
    return to_json_value(result, f"undo handler '{name}'")
