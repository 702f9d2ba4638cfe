"""The undo log of destructive operations.

A step marked `destructive: true` gets an entry in `undo_log`, written and committed before its
action starts (`prepared`), then `done` (undoable until `expires_at`), `void` (the action
failed) or `not_undoable` (no `undo:`). `flowdeck undo` moves a `done` entry through
`undoing` to `undone` or `failed` exactly once (compare-and-set); a failed undo can be retried.

| module | job |
| --- | --- |
| hook.py | `UndoHook`: the write-ahead log around destructive steps (`Engine.undo`) |
| execute.py | `undo_entry`, `undo_last`, `undo_run`: undoing, from any process |
| calls.py | the capture read and the compensation: agents, retries, attempt rows |
| entries.py | rows, compare-and-set transitions, history, pruning, liveness |

Attempts of the capture read and of the compensation are rows of `attempts` under the step ids
`STEP.capture` and `STEP.undo`. The compensation's `Idempotency-Key` is
`RUN:STEP:undo:ENTRY:N` (N: number of its first attempt, so an explicit retry is a new request
while automatic retries repeat one key).
"""

from typing import TYPE_CHECKING, Any

from engine.undo.entries import list_entries, process_alive

if TYPE_CHECKING:
    from engine.undo.execute import (
        UndoResult,
        default_actor,
        undo_entry,
        undo_last,
        undo_run,
    )
    from engine.undo.hook import UndoHook

_LAZY = {
    "UndoHook": "engine.undo.hook",
    "UndoResult": "engine.undo.execute",
    "default_actor": "engine.undo.execute",
    "undo_entry": "engine.undo.execute",
    "undo_last": "engine.undo.execute",
    "undo_run": "engine.undo.execute",
}
"""Imported on first use: the hook needs engine.runner (commands that only undo or list should
not import it), and an engine that runs no destructive step never needs the undoing code."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.undo' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "UndoHook",
    "UndoResult",
    "default_actor",
    "list_entries",
    "process_alive",
    "undo_entry",
    "undo_last",
    "undo_run",
]
