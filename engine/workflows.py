"""A directory of workflow files that can be started by name (`flowdeck serve --workflows DIR`).

The directory is scanned on each lookup (cheap: one `stat` per file; a file is parsed again
only when its size or mtime changed), so files added or edited while the server runs are seen.
A workflow is found by its `name:`; a file that does not load is listed with its problems under
its file name. Blocking: call from a worker thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import NotFound, WorkflowError
from engine.models import WorkflowSpec

log = logging.getLogger("flowdeck.workflows")

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class WorkflowFile:
    """One file of the directory."""

    path: Path
    name: str
    """The spec's name, or the file name without suffix when it does not load."""
    spec: WorkflowSpec | None
    problems: list[str] = field(default_factory=list)


class WorkflowLibrary:
    """The workflow files of one directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        """The directory holding the files (not searched recursively)."""
        self._cache: dict[Path, tuple[tuple[int, int], WorkflowFile]] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise `NotFound` if the directory does not exist."""
        if not self.directory.is_dir():
            raise NotFound(f"{self.directory}: no such directory")

    def files(self) -> list[WorkflowFile]:
        """Every workflow file, in file-name order."""
        try:
            paths = sorted(
                p for p in self.directory.iterdir() if p.suffix in SUFFIXES and p.is_file()
            )
        except OSError as e:
            log.warning("cannot list %s: %s", self.directory, e.strerror)
            return []
        with self._lock:
            result = []
            for path in paths:
                try:
                    info = path.stat()
                except OSError:
                    continue
                key = (info.st_mtime_ns, info.st_size)
                cached = self._cache.get(path)
                if cached is None or cached[0] != key:
                    cached = (key, _load(path))
                    self._cache[path] = cached
                result.append(cached[1])
            for gone in set(self._cache) - set(paths):
                del self._cache[gone]
        return result

    def get(self, name: str) -> WorkflowFile:
        """The file of the workflow called `name` (first by file name if several share it)."""
        broken = None
        for wf in self.files():
            if wf.name == name:
                if wf.spec is not None:
                    return wf
                broken = broken or wf
        if broken is not None:
            return broken
        raise NotFound(f"no workflow '{name}' in {self.directory}")


def _load(path: Path) -> WorkflowFile:
    from engine.loader import load_workflow

    try:
        spec = load_workflow(path)
    except WorkflowError as e:
        log.warning("%s: %d problem(s); it cannot be started", path, len(e.problems))
        return WorkflowFile(path, path.stem, None, list(e.problems))
    return WorkflowFile(path, spec.name, spec)
