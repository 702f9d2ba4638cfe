"""Small functions used by the bundled example workflows (`examples/*.yaml`).

They are ordinary `python` agent targets (`with: {call: "engine.examples:NAME", args: {...}}`):
keyword arguments in, a JSON-serialisable dict out.
"""

from __future__ import annotations

from typing import Any


def word_stats(text: str) -> dict[str, Any]:
    """Count the words and characters of `text`."""
    words = text.split()
    return {
        "words": len(words),
        "characters": len(text),
        "longest": max(words, key=len) if words else "",
    }


def summarise(**parts: Any) -> dict[str, Any]:
    """Fan-in: fold what the parallel steps found into one line plus the parts themselves."""
    shown = ", ".join(f"{key}={str(value).strip()}" for key, value in sorted(parts.items()))
    return {"summary": shown, "parts": parts, "count": len(parts)}
