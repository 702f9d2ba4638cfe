"""Text in the bundled examples survives YAML: an unquoted ` #` starts a comment and would cut
a description short (`Delete the update in #alerts` became `Delete the update in`)."""

from __future__ import annotations

import re

from tests.conftest import ROOT

UNQUOTED_HASH = re.compile(r"^\s*[\w-]+:\s+[^\"'{\[#\s][^#]*\s#\S")


def test_no_example_value_is_cut_by_a_yaml_comment():
    bad = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted((ROOT / "examples").glob("*.yaml"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if UNQUOTED_HASH.match(line)
    ]
    assert bad == []
