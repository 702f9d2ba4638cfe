"""engine/loader.py: workflow files -> WorkflowSpec, every problem as `FILE:LINE:COL: path: message`."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.agents import base as agents_base
from engine.errors import InputError, WorkflowError
from engine.loader import (
    MAX_BYTES,
    check_files,
    load_workflow,
    load_workflow_text,
    parse_inputs,
)
from engine.models import WorkflowSpec

DATA = Path(__file__).parent / "data" / "workflows"
ROOT = Path(__file__).resolve().parent.parent
LINE_RE = re.compile(
    r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<col>\d+): (?P<path>\S[^\n]*?): (?P<msg>[^\n]+)$"
)


def problems(text: str | bytes, filename: str = "wf.yaml") -> list[str]:
    with pytest.raises(WorkflowError) as info:
        load_workflow_text(text, filename)
    lines = info.value.problems
    assert lines, "a WorkflowError always has at least one problem"
    for line in lines:
        assert LINE_RE.match(line), line
    return lines


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


class FakeAgent(agents_base.Agent):
    """A registered kind with known parameter rules, independent of the real agents."""

    seen: ClassVar[list[dict[str, Any]]] = []

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[str]:
        cls.seen.append(params)
        out = []
        if "url" not in params:
            out.append("url: required")
        if "bad" in params:
            out.append("bad.inner: not allowed here")
        return out


agents_base.register("fake")(FakeAgent)


# --------------------------------------------------------------------------- valid files


def test_valid_yaml_fixture_loads():
    spec = load_workflow(DATA / "valid.yaml")
    assert isinstance(spec, WorkflowSpec)
    assert list(spec.steps) == ["triage", "ticket", "close_pr", "announce"]
    assert spec.steps["close_pr"].undo is not None
    assert spec.steps["ticket"].with_["json"]["title"] == "${{ steps.triage.output.words }} words"


def test_valid_json_fixture_loads():
    spec = load_workflow(DATA / "valid.json")
    assert spec.steps["close_pr"].destructive is True
    assert spec.inputs["pr"].type == "integer"


def test_bundled_example_is_valid():
    spec = load_workflow(ROOT / "examples" / "hello.yaml")
    assert 5 <= len(spec.steps) <= 7
    assert {a.kind for a in spec.agents.values()} == {"shell", "python"}
    assert check_files([ROOT / "examples" / "hello.yaml"]) == []


def test_yaml_scalars_follow_the_core_schema():
    spec = load_workflow_text(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          a:
            agent: f
            with: {url: u, on: yes, off: no, date: 2024-01-01, octal: 010, hex: 0x1F, f: 1.5e3, n: ~}
        """),
        "wf.yaml",
    )
    w = spec.steps["a"].with_
    assert w == {
        "url": "u",
        "on": "yes",
        "off": "no",
        "date": "2024-01-01",
        "octal": 10,
        "hex": 31,
        "f": 1500.0,
        "n": None,
    }


def test_merge_keys_and_aliases_work():
    spec = load_workflow_text(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          a: &base {agent: f, with: {url: u}}
          b: {<<: *base, needs: [a]}
          c: {<<: [*base], agent: g, needs: [b]}
        """).replace("agent: g", "description: own"),
        "wf.yaml",
    )
    assert spec.steps["b"].agent == "f"
    assert spec.steps["b"].needs == ["a"]
    assert spec.steps["c"].with_ == {"url": "u"}
    assert spec.steps["c"].description == "own"


def test_unknown_extension_sniffs_json_and_yaml():
    text = '{"name": "x", "agents": {"f": {"kind": "fake"}}, "steps": {"a": {"agent": "f", "with": {"url": "u"}}}}'
    assert load_workflow_text(text, "wf.txt").name == "x"
    assert (
        load_workflow_text(
            "{name: x, agents: {f: {kind: fake}}, steps: {a: {agent: f, with: {url: u}}}}", "wf"
        ).name
        == "x"
    )
    assert load_workflow_text(text.encode(), "-").name == "x"


# --------------------------------------------------------------------------- schema problems


def test_unknown_key_did_you_mean_yaml():
    assert problems(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          a: {agent: f, with: {url: u}}
          b:
            agent: f
            need: [a]
            with: {url: u}
        """)
    ) == ["wf.yaml:7:5: steps.b.need: unknown key 'need'; did you mean 'needs'?"]


def test_unknown_key_did_you_mean_json():
    # line 4: `    "a": {"agent": "sh", "needz": []}` -> "needz" opens at column 26
    assert problems((DATA / "broken.json").read_text(), "broken.json") == [
        "broken.json:4:11: steps.a.agent: unknown agent 'sh' (no agents are declared)",
        "broken.json:4:26: steps.a.needz: unknown key 'needz'; did you mean 'needs'?",
    ]


def test_unknown_key_without_close_match_lists_allowed_keys():
    (line,) = problems(
        "name: x\nsteps: {a: {agent: f, with: {url: u}}}\nagents: {f: {kind: fake, zzz: 1}}\n"
    )
    assert line.startswith(
        "wf.yaml:3:26: agents.f.zzz: unknown key 'zzz' (allowed: kind, base_url,"
    )


def test_wrong_types_and_missing_field():
    assert problems(
        y("""
        description: no name here
        concurrency: lots
        agents: {f: {kind: fake}}
        steps:
          a: {agent: f, timeout: -2, with: {url: u}}
        """)
    ) == [
        "wf.yaml:1:1: name: missing required field",
        "wf.yaml:2:1: concurrency: should be a valid integer, unable to parse string as an integer, got 'lots'",
        "wf.yaml:5:17: steps.a.timeout: should be greater than 0, got -2",
    ]


def test_with_is_reported_by_alias():
    assert problems("name: x\nagents: {f: {kind: fake}}\nsteps:\n  a: {agent: f, with: [1]}\n") == [
        "wf.yaml:4:17: steps.a.with: should be a valid dictionary, got a list"
    ]


def test_model_validator_message_and_literal():
    assert problems(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          a:
            agent: f
            destructive: true
            with: {url: u}
            review: {when: sometimes}
            undo: {ttl: 5}
        """)
    ) == [
        "wf.yaml:8:14: steps.a.review.when: must be 'always', 'destructive' or 'confidence < NUMBER' (0..1), got 'sometimes'",
        "wf.yaml:9:5: steps.a.undo: undo needs `with` (a compensating action) or `handler`",
    ]


def test_union_errors_are_merged_into_one_line():
    (line,) = problems(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          r:
            route: {candidates: [{target: r2, confidence: [1]}]}
          r2: {agent: f, with: {url: u}}
        """)
    )
    assert line == (
        "wf.yaml:5:39: steps.r.route.candidates[0].confidence: "
        "should be a valid number or should be a valid string, got a list"
    )


def test_top_level_not_a_mapping():
    assert problems("- a\n- b\n") == [
        "wf.yaml:1:1: (root): a workflow is a mapping with 'name' and 'steps', got a list"
    ]
    assert problems("[1, 2]", "wf.json") == [
        "wf.json:1:1: (root): a workflow is a mapping with 'name' and 'steps', got a list"
    ]
    assert problems("# only a comment\n") == [
        "wf.yaml:1:1: (root): a workflow is a mapping with 'name' and 'steps', got an empty document"
    ]


def test_empty_or_missing_steps():
    assert problems("name: x\nsteps: {}\n") == [
        "wf.yaml:2:1: steps: a workflow needs at least one step"
    ]
    assert problems("name: x\nsteps:\n") == [
        "wf.yaml:2:1: steps: should be a valid dictionary, got null"
    ]
    assert problems("name: x\n") == ["wf.yaml:1:1: steps: missing required field"]


# --------------------------------------------------------------------------- semantic problems


def test_unknown_agent_and_unknown_kind():
    assert problems(
        y("""
        name: x
        agents:
          github: {kind: htp}
        steps:
          a: {agent: gihub}
        """)
    ) == [
        "wf.yaml:3:12: agents.github.kind: unknown agent kind 'htp'; did you mean 'http'?",
        "wf.yaml:5:7: steps.a.agent: unknown agent 'gihub'; did you mean 'github'?",
    ]


def test_step_without_agent_or_route():
    assert problems("name: x\nsteps:\n  a: {description: nothing}\n") == [
        "wf.yaml:3:3: steps.a.agent: missing: a step needs `agent` (or `route`)"
    ]


def test_unknown_step_in_needs_points_at_the_item():
    assert problems(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          build: {agent: f, with: {url: u}}
          test:
            agent: f
            with: {url: u}
            needs:
              - build
              - biuld
        """)
    ) == ["wf.yaml:10:9: steps.test.needs[1]: unknown step 'biuld'; did you mean 'build'?"]


def test_needs_as_a_single_string():
    spec = load_workflow_text(
        "name: x\nagents: {f: {kind: fake}}\nsteps:\n  a: {agent: f, with: {url: u}}\n  b: {agent: f, needs: a, with: {url: u}}\n",
        "wf.yaml",
    )
    assert spec.steps["b"].needs == ["a"]


def test_cycle_is_named_as_a_path():
    assert problems((DATA / "broken.yaml").read_text(), "broken.yaml") == [
        "broken.yaml:5:18: steps.a.needs: dependency cycle: a -> c -> b -> a"
    ]


def test_self_cycle_and_two_cycles():
    assert problems(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          a: {agent: f, needs: [a], with: {url: u}}
          b: {agent: f, needs: [c], with: {url: u}}
          c: {agent: f, needs: [b], with: {url: u}}
        """)
    ) == [
        "wf.yaml:4:17: steps.a.needs: dependency cycle: a -> a",
        "wf.yaml:5:17: steps.b.needs: dependency cycle: b -> c -> b",
    ]


def test_expression_problems():
    assert problems(
        y("""
        name: x
        inputs:
          pr: {type: integer}
        agents: {f: {kind: fake}}
        steps:
          a: {agent: f, with: {url: "${{ inputs.pri }}"}}
          b:
            agent: f
            with:
              url: u
              body: {title: "${{ steps.c.output.title }}", n: "${{ 1 + 2 }}"}
              list: ["ok", "${{ steps.nope.output }}", "${{ steps.b.output }}", "${{ output.x }}"]
              open: "${{ inputs.pr"
          c: {agent: f, needs: [a], with: {url: "${{ steps.a.output.url }}"}}
        """)
    ) == [
        "wf.yaml:6:24: steps.a.with.url: ${{ inputs.pri }}: unknown input 'pri'; did you mean 'pr'?",
        "wf.yaml:11:14: steps.b.with.body.title: ${{ steps.c.output.title }}: step 'c' is not in the needs of 'b' (directly or transitively); add it to needs",
        "wf.yaml:11:52: steps.b.with.body.n: bad expression ${{ 1 + 2 }}: '1 + 2' is not a reference like inputs.NAME or steps.ID.output.PATH",
        "wf.yaml:12:20: steps.b.with.list[1]: ${{ steps.nope.output }}: unknown step 'nope' (known: a, b, c)",
        "wf.yaml:12:48: steps.b.with.list[2]: ${{ steps.b.output }}: a step cannot use its own output",
        "wf.yaml:12:73: steps.b.with.list[3]: ${{ output.x }}: 'output' is only available in `undo.with` and `undo.description`",
        "wf.yaml:13:7: steps.b.with.open: unclosed expression in '${{ inputs.pr': write ${{ ... }}",
    ]


def test_transitive_upstream_reference_is_fine():
    spec = load_workflow_text(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          a: {agent: f, with: {url: u}}
          b: {agent: f, needs: [a], with: {url: u}}
          c: {agent: f, needs: [b], with: {url: "${{ steps.a.output.url }}"}}
        """),
        "wf.yaml",
    )
    assert spec.steps["c"].needs == ["b"]


def test_undo_rules():
    assert problems(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          a:
            agent: f
            with: {url: u}
            review: {when: destructive}
            undo:
              agent: nope
              with: {url: "${{ output.id }} ${{ before.x }} ${{ steps.a.output.id }}"}
        """)
    ) == [
        "wf.yaml:8:5: steps.a.undo: undo is only for destructive steps; add `destructive: true`",
        "wf.yaml:9:7: steps.a.undo.agent: unknown agent 'nope' (known: f)",
    ]


def test_route_targets():
    assert problems(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          pick:
            route:
              candidates:
                - {target: fast, confidence: 0.9}
                - {target: slwo, confidence: "${{ steps.fast.output.score }}"}
          fast: {agent: f, needs: [pick], with: {url: u}}
          slow: {agent: f, needs: [pick], with: {url: u}}
        """)
    ) == [
        "wf.yaml:8:12: steps.pick.route.candidates[1].target: unknown route target 'slwo': not a step or agent id; did you mean 'slow'?",
        "wf.yaml:8:26: steps.pick.route.candidates[1].confidence: ${{ steps.fast.output.score }}: step 'fast' is not in the needs of 'pick' (directly or transitively); add it to needs",
    ]


def test_agent_validate_params_problems():
    assert problems(
        y("""
        name: x
        agents: {f: {kind: fake}}
        steps:
          a:
            agent: f
            with: {bad: {inner: 1}}
        """)
    ) == [
        "wf.yaml:6:5: steps.a.with.url: required",
        "wf.yaml:6:18: steps.a.with.bad.inner: not allowed here",
    ]


def test_agent_kind_whose_module_is_missing_is_not_checked(monkeypatch):
    monkeypatch.setitem(agents_base._BUILTIN, "ghost", "engine.agents.ghost_that_does_not_exist")
    spec = load_workflow_text(
        "name: x\nagents: {g: {kind: ghost}}\nsteps:\n  a: {agent: g, with: {anything: 1}}\n",
        "wf.yaml",
    )
    assert spec.agents["g"].kind == "ghost"


def test_agent_validate_params_that_raises_is_skipped(monkeypatch):
    def boom(params):
        raise RuntimeError("bug in an agent")

    monkeypatch.setattr(FakeAgent, "validate_params", classmethod(lambda cls, p: boom(p)))
    spec = load_workflow_text(
        "name: x\nagents: {f: {kind: fake}}\nsteps: {a: {agent: f}}\n", "x.yaml"
    )
    assert spec.steps["a"].agent == "f"


def test_input_default_of_the_wrong_type():
    assert problems(
        "name: x\ninputs:\n  n: {type: integer, default: abc}\nagents: {f: {kind: fake}}\nsteps: {a: {agent: f, with: {url: u}}}\n"
    ) == ["wf.yaml:3:22: inputs.n.default: expected integer, got 'abc'"]


def test_huge_numbers_do_not_break_anything():
    digits = "1" + "0" * 5000
    lines = problems(
        f"name: x\ninputs: {{n: {{type: integer, default: {digits}}}}}\nagents: {{f: {{kind: fake}}}}\n"
        f"steps: {{a: {{agent: f, timeout: {digits}, with: {{url: u}}}}}}\n"
    )
    assert lines[0].startswith("wf.yaml:2:29: inputs.n.default: expected integer, got '1000")
    assert (
        load_workflow_text(
            f'{{"name": "x", "inputs": {{"n": {{"type": "number", "default": 1{"0" * 400}}}}}, '
            f'"agents": {{"f": {{"kind": "fake"}}}}, "steps": {{"a": {{"agent": "f", "with": {{"url": "u"}}}}}}}}',
            "wf.json",
        )
        .inputs["n"]
        .default
        == 10**400
    )


def test_ids_must_be_referenceable():
    assert problems(
        "name: x\nagents: {f: {kind: fake}}\nsteps:\n  a.b: {agent: f, with: {url: u}}\n"
    ) == ["wf.yaml:4:3: steps[\"a.b\"]: step id 'a.b': use only letters, digits, '-' and '_'"]


def test_many_problems_in_one_pass():
    lines = problems(
        y("""
        name: bad name
        inputs:
          pr: {type: integer}
        agents:
          github: {kind: htp}
          sh: {kind: shell, timeout: -1}
        steps:
          triage: {agent: gihub, need: [x], with: {prompt: "${{ inputs.pri }}"}}
          ticket:
            agent: github
            needs: [triage, close, nope]
            timeout: soon
          close:
            agent: github
            needs: ticket
            with: {x: 1, x: 2}
        """)
    )
    assert lines == [
        "wf.yaml:1:1: name: use only letters, digits, '-' and '_', got 'bad name'",
        "wf.yaml:5:12: agents.github.kind: unknown agent kind 'htp'; did you mean 'http'?",
        "wf.yaml:6:21: agents.sh.timeout: should be greater than 0, got -1",
        "wf.yaml:8:12: steps.triage.agent: unknown agent 'gihub'; did you mean 'github'?",
        "wf.yaml:8:26: steps.triage.need: unknown key 'need'; did you mean 'needs'?",
        "wf.yaml:8:44: steps.triage.with.prompt: ${{ inputs.pri }}: unknown input 'pri'; did you mean 'pr'?",
        "wf.yaml:11:5: steps.ticket.needs: dependency cycle: ticket -> close -> ticket",
        "wf.yaml:11:28: steps.ticket.needs[2]: unknown step 'nope' (known: close, ticket, triage)",
        "wf.yaml:12:5: steps.ticket.timeout: should be a valid number, unable to parse string as a number, got 'soon'",
        "wf.yaml:16:18: steps.close.with.x: duplicate key 'x'",
    ]


def test_problems_of_broken_parts_are_not_repeated_by_semantics():
    # `agent: 5` is a type error; the semantic "missing agent" must not be reported on top.
    assert problems("name: x\nsteps:\n  a: {agent: 5}\n  b: {needs: 7, agent: q}\n") == [
        "wf.yaml:3:7: steps.a.agent: should be a valid string, got 5",
        "wf.yaml:4:7: steps.b.needs: should be a valid list, got 7",
        "wf.yaml:4:17: steps.b.agent: unknown agent 'q' (no agents are declared)",
    ]


# --------------------------------------------------------------------------- syntax, positions


def test_yaml_syntax_error_position_and_path():
    assert problems("name: x\nsteps:\n  a: {agent: sh\n  b: 1\n") == [
        "wf.yaml:4:4: steps.a: invalid YAML: did not find expected ',' or '}' (while parsing a flow mapping at line 3, column 6)"
    ]


def test_yaml_tab_indentation_gets_a_hint():
    assert problems("name: x\nsteps:\n\ta: 1\n") == [
        "wf.yaml:3:1: steps: invalid YAML: found character that cannot start any token; "
        "YAML does not allow tabs for indentation, use spaces"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"name": "x",\n "steps": {"a": {"agent": "sh",}}}',
            "wf.json:2:32: steps.a: invalid JSON: trailing comma before '}'",
        ),
        (
            '{"name": "x" "steps": 1}',
            "wf.json:1:14: (root): invalid JSON: expected ',' or '}', found '\"'",
        ),
        ('{"name": x}', "wf.json:1:10: name: invalid JSON: expected a value, found 'x'"),
        (
            '{"name": "x"',
            "wf.json:1:13: (root): invalid JSON: expected ',' or '}', found end of file",
        ),
        ('{"a": [1, 2,]}', "wf.json:1:13: a[2]: invalid JSON: trailing comma before ']'"),
        (
            "{'a': 1}",
            'wf.json:1:2: (root): invalid JSON: expected a key in double quotes, found "\'"',
        ),
        ('{"a": "tab\there"}', "wf.json:1:11: a: invalid JSON: invalid control character"),
        ('{"a": 1} 2', "wf.json:1:10: (root): invalid JSON: unexpected '2' after the document"),
        ('{"a": 1e}', "wf.json:1:8: (root): invalid JSON: expected ',' or '}', found 'e'"),
    ],
)
def test_json_syntax_errors(text: str, expected: str):
    assert problems(text, "wf.json") == [expected]


def test_json_allows_tabs_and_crlf_and_positions_count_them():
    text = '{\r\n\t"name": "x",\r\n\t"steps": {\r\n\t\t"a": {"agent": "f", "tiemout": 1}}}'
    assert problems(text, "wf.json") == [
        "wf.json:4:9: steps.a.agent: unknown agent 'f' (no agents are declared)",
        "wf.json:4:23: steps.a.tiemout: unknown key 'tiemout'; did you mean 'timeout'?",
    ]


def test_json_duplicate_keys_and_unicode_columns():
    text = (
        '{"name": "x", "description": "héllo ✓ 😀", "name": "y",\n "steps": {"é": {"agent": "f"}}}'
    )
    assert problems(text, "wf.json") == [
        "wf.json:1:43: name: duplicate key 'name'",
        "wf.json:2:12: steps[\"é\"]: step id 'é': use only letters, digits, '-' and '_'",
        "wf.json:2:18: steps[\"é\"].agent: unknown agent 'f' (no agents are declared)",
    ]


def test_yaml_duplicate_keys_at_every_level():
    assert problems(
        y("""
        name: x
        name: y
        agents: {f: {kind: fake}}
        steps:
          a: {agent: f, with: {url: u}}
          a: {agent: f, with: {url: u}}
        """)
    ) == [
        "wf.yaml:2:1: name: duplicate key 'name'",
        "wf.yaml:6:3: steps.a: duplicate key 'a'",
    ]


def test_non_string_keys():
    lines = problems(
        "name: x\n1: a\n? [a, b]\n: c\nagents: {f: {kind: fake}}\nsteps: {a: {agent: f, with: {url: u, 2: b}}}\n"
    )
    assert lines == [
        "wf.yaml:2:1: 1: unknown key '1' (allowed: name, description, inputs, agents, defaults, concurrency, steps)",
        "wf.yaml:3:3: (root): keys must be strings, got a list",
    ]
    assert problems("name: x\n~: 1\nsteps: {a: {agent: f}}\n")[0] == (
        "wf.yaml:2:1: (root): keys must be strings, got null"
    )


def test_multiple_documents_and_tags():
    assert problems("name: x\n---\nname: y\n") == [
        "wf.yaml:2:1: (root): only one YAML document per file (found '---')"
    ]
    assert problems("name: !!python/object:os.system x\nsteps: {a: {agent: f}}\n")[0] == (
        "wf.yaml:1:7: name: unsupported tag 'tag:yaml.org,2002:python/object:os.system'"
    )


# --------------------------------------------------------------------------- pathological input


def test_empty_and_whitespace_files():
    for text in ("", b"", "   \n\n", "\ufeff"):
        assert problems(text) == [
            "wf.yaml:1:1: (root): file is empty; a workflow needs 'name' and 'steps'"
        ]


def test_binary_and_invalid_utf8():
    assert problems(b"\x00\x01\x02\xff") == [
        "wf.yaml:1:1: (root): binary data (NUL byte), not a YAML or JSON workflow"
    ]
    assert problems(b"name: x\nsteps: caf\xe9\n") == [
        "wf.yaml:2:11: (root): not valid UTF-8 text (byte 0xe9)"
    ]
    assert problems("name: x\x07\n") == [
        "wf.yaml:1:8: (root): character U+0007 is not allowed in a workflow file"
    ]
    assert problems('{"a": "\ud800"}', "wf.json") == [
        "wf.json:1:8: (root): character U+D800 is not allowed in a workflow file"
    ]


def test_utf8_bom_and_utf16_are_read():
    text = "name: x\nagents: {f: {kind: fake}}\nsteps: {a: {agent: f, with: {url: u}}}\n"
    assert load_workflow_text(b"\xef\xbb\xbf" + text.encode(), "wf.yaml").name == "x"
    assert (
        load_workflow_text("\ufeff".encode("utf-16-le") + text.encode("utf-16-le"), "wf.yaml").name
        == "x"
    )


def test_huge_file_is_one_line_and_fast(tmp_path: Path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"name: x\ndescription: " + b"a" * (10 * 1024 * 1024))
    start = time.perf_counter()
    with pytest.raises(WorkflowError) as info:
        load_workflow(big)
    assert time.perf_counter() - start < 1
    assert info.value.problems == [f"{big}:1:1: (root): file is too large (more than 5 MB)"]
    assert problems("a" * (MAX_BYTES + 1)) == [
        "wf.yaml:1:1: (root): file is too large (more than 5 MB)"
    ]


@pytest.mark.parametrize("filename", ["wf.yaml", "wf.json", "wf"])
@pytest.mark.parametrize("closed", [False, True])
def test_deep_nesting(filename: str, closed: bool):
    text = "[" * 10_000 + ("]" * 10_000 if closed else "")
    (line,) = problems(text, filename)
    assert line.startswith(
        f"{filename}:1:101: [0][0][0][0][0]...[0][0][0][0][0]: nested too deeply"
    )


def test_deep_nesting_in_block_yaml():
    text = "name: x\nsteps:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 300))
    (line,) = problems(text)
    assert "nested too deeply (over 100 levels)" in line


def test_billion_laughs_is_capped():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    start = time.perf_counter()
    (line,) = problems("\n".join(lines))
    assert time.perf_counter() - start < 1
    assert "too many values (over 500000 after expanding aliases)" in line


def test_recursive_alias():
    lines = problems("name: x\nsteps: &s\n  a: {agent: f, needs: *s}\n")
    assert "wf.yaml:3:24: steps.a.needs: alias '*s' refers to itself" in lines


def test_many_steps_chain_is_fine():
    n = 3000
    steps = "".join(
        f"  s{i}: {{agent: f, needs: [s{i - 1}], with: {{url: u}}}}\n" for i in range(1, n)
    )
    text = "name: x\nagents: {f: {kind: fake}}\nsteps:\n  s0: {agent: f, with: {url: u}}\n" + steps
    start = time.perf_counter()
    spec = load_workflow_text(text, "wf.yaml")
    assert len(spec.steps) == n
    assert time.perf_counter() - start < 5


def test_newlines_in_keys_never_break_the_one_line_rule():
    lines = problems('{"name": "x", "st\\neps\\u001b[31m": 1}', "wf.json")
    assert len(lines) >= 1
    assert all("\n" not in line and "\x1b" not in line for line in lines)


# --------------------------------------------------------------------------- files


def test_check_files_collects_every_file(tmp_path: Path):
    missing = tmp_path / "missing.yaml"
    lines = check_files(
        [DATA / "valid.yaml", DATA / "broken.yaml", missing, tmp_path, DATA / "broken.json"]
    )
    assert (
        lines[0]
        == f"{DATA / 'broken.yaml'}:5:18: steps.a.needs: dependency cycle: a -> c -> b -> a"
    )
    assert lines[1] == f"{missing}:1:1: (root): cannot read file: No such file or directory"
    assert lines[2].startswith(f"{tmp_path}:1:1: (root): cannot read file: ")
    assert lines[3:] == [
        f"{DATA / 'broken.json'}:4:11: steps.a.agent: unknown agent 'sh' (no agents are declared)",
        f"{DATA / 'broken.json'}:4:26: steps.a.needz: unknown key 'needz'; did you mean 'needs'?",
    ]
    assert check_files([DATA / "valid.yaml", DATA / "valid.json"]) == []


# --------------------------------------------------------------------------- inputs


@pytest.fixture
def typed_spec() -> WorkflowSpec:
    return load_workflow_text(
        y("""
        name: x
        inputs:
          pr: {type: integer, required: true}
          ratio: {type: number, default: 0.5}
          dry: {type: boolean, default: false}
          cfg: {type: object}
          tags: {type: array, default: [a]}
          who: {type: string}
        agents: {f: {kind: fake}}
        steps: {a: {agent: f, with: {url: u}}}
        """),
        "wf.yaml",
    )


def test_parse_inputs_converts_cli_strings(typed_spec: WorkflowSpec):
    got = parse_inputs(
        typed_spec,
        {"pr": "42", "ratio": "1e-3", "dry": "YES", "cfg": '{"a": [1]}', "tags": "[]", "who": "7"},
    )
    assert got == {"pr": 42, "ratio": 0.001, "dry": True, "cfg": {"a": [1]}, "tags": [], "who": "7"}
    assert parse_inputs(typed_spec, {"pr": "-3", "ratio": "2", "dry": "0"}) == {
        "pr": -3,
        "ratio": 2,
        "dry": False,
        "cfg": None,
        "tags": ["a"],
        "who": None,
    }


def test_parse_inputs_reports_every_problem(typed_spec: WorkflowSpec):
    with pytest.raises(InputError) as info:
        parse_inputs(
            typed_spec,
            {"pr": "abc", "ratio": "nan", "dry": "maybe", "cfg": "[1]", "tags": "{", "rato": "1"},
        )
    assert str(info.value).splitlines() == [
        "input 'rato': unknown input; did you mean 'ratio'?",
        "input 'pr': expected integer, got 'abc'",
        "input 'ratio': expected number, got 'nan'",
        "input 'dry': expected boolean (true/false/1/0/yes/no), got 'maybe'",
        "input 'cfg': expected JSON object, got '[1]'",
        "input 'tags': expected JSON array, got '{'",
    ]
    with pytest.raises(InputError) as info:
        parse_inputs(typed_spec, {})
    assert str(info.value) == "input 'pr': required (pass --input pr=VALUE)"


def test_parse_inputs_typed_values_from_json_apis(typed_spec: WorkflowSpec):
    got = parse_inputs(typed_spec, {"pr": 7, "ratio": 3, "dry": True, "cfg": {}}, from_cli=False)
    assert got["pr"] == 7 and got["ratio"] == 3 and got["dry"] is True and got["cfg"] == {}
    with pytest.raises(InputError) as info:
        parse_inputs(typed_spec, {"pr": "7", "dry": 1, "cfg": [], "who": 5}, from_cli=False)
    assert str(info.value).splitlines() == [
        "input 'pr': expected integer, got '7'",
        "input 'dry': expected boolean (true/false/1/0/yes/no), got 1",
        "input 'cfg': expected JSON object, got []",
        "input 'who': expected string, got 5",
    ]
    with pytest.raises(InputError) as info:
        parse_inputs(typed_spec, {}, from_cli=False)
    assert str(info.value) == "input 'pr': required"


def test_parse_inputs_defaults_are_copies(typed_spec: WorkflowSpec):
    first = parse_inputs(typed_spec, {"pr": "1"})
    first["tags"].append("b")
    assert parse_inputs(typed_spec, {"pr": "1"})["tags"] == ["a"]


def test_parse_inputs_without_declared_inputs():
    spec = load_workflow_text(
        "name: x\nagents: {f: {kind: fake}}\nsteps: {a: {agent: f, with: {url: u}}}\n", "w.yaml"
    )
    with pytest.raises(
        InputError, match=r"input 'x': unknown input \(this workflow takes no inputs\)"
    ):
        parse_inputs(spec, {"x": "1"})


# --------------------------------------------------------------------------- fuzz

VALID_YAML = (DATA / "valid.yaml").read_text()
VALID_JSON = (DATA / "valid.json").read_text()


def _outcome(text: str | bytes, filename: str) -> None:
    try:
        result = load_workflow_text(text, filename)
    except WorkflowError as e:
        assert e.problems
        for line in e.problems:
            assert LINE_RE.match(line), line
            assert "internal error" not in line, line
    else:
        assert isinstance(result, WorkflowSpec)


FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["f.yaml", "f.json", "f"]))
def test_fuzz_random_bytes(data: bytes, filename: str):
    _outcome(data, filename)


@FUZZ
@given(
    st.text(alphabet=st.sampled_from(list("{}[]:,-?&*!|>'\"#%@` \n\tab1.~<$")), max_size=300),
    st.sampled_from(["f.yaml", "f.json", "f"]),
)
def test_fuzz_syntax_soup(text: str, filename: str):
    _outcome(text, filename)


def _mutate(text: str, ops: list[tuple[int, int, int, str]]) -> str:
    for op, a, b, piece in ops:
        lines = text.split("\n")
        if op == 0 and text:  # delete characters
            i = a % len(text)
            text = text[:i] + text[i + b % 8 + 1 :]
        elif op == 1 and text:  # duplicate characters
            i = a % len(text)
            text = text[:i] + text[i : i + b % 12 + 1] + text[i:]
        elif op == 2 and text:  # replace a character
            i = a % len(text)
            text = text[:i] + piece + text[i + 1 :]
        elif op == 3:  # delete a line
            del lines[a % len(lines)]
            text = "\n".join(lines)
        elif op == 4:  # duplicate a line
            i = a % len(lines)
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif op == 5:  # swap two lines
            i, j = a % len(lines), b % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == 6:  # swap two values (words after ':')
            values = list(re.finditer(r"(?<=: )[^,{}\[\]\n]+", text))
            if len(values) >= 2:
                m1, m2 = sorted(
                    (values[a % len(values)], values[b % len(values)]), key=lambda m: m.start()
                )
                if m1.start() != m2.start():
                    text = (
                        text[: m1.start()]
                        + m2.group()
                        + text[m1.end() : m2.start()]
                        + m1.group()
                        + text[m2.end() :]
                    )
        elif op == 7:  # insert a piece of syntax
            i = a % (len(text) + 1)
            text = text[:i] + piece + text[i:]
    return text


MUTATIONS = st.lists(
    st.tuples(
        st.integers(0, 7),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
        st.sampled_from(
            [
                "",
                " ",
                "\n",
                "\t",
                ":",
                "-",
                "[",
                "]",
                "{",
                "}",
                ",",
                '"',
                "'",
                "&x",
                "*x",
                "!!",
                "${{",
                "}}",
                "\x00",
                "é",
                "\ufeff",
                "0",
                "true",
                "~",
                "<<: *x",
            ]
        ),
    ),
    min_size=1,
    max_size=6,
)


@FUZZ
@given(MUTATIONS)
def test_fuzz_mutated_yaml(ops):
    _outcome(_mutate(VALID_YAML, ops), "f.yaml")


@FUZZ
@given(MUTATIONS, st.sampled_from(["f.json", "f"]))
def test_fuzz_mutated_json(ops, filename: str):
    _outcome(_mutate(VALID_JSON, ops), filename)


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_fuzz_json_documents(value: Any):
    text = json.dumps({"name": "x", "steps": {"a": value}} if isinstance(value, dict) else value)
    _outcome(text, "f.json")


BROKEN_DOC = {
    "name": "x",
    "inputs": {"pr": {"type": "integer", "default": "abc"}},
    "agents": {"f": {"kind": "fake"}, "g": {"kind": "htp", "timeout": -1}},
    "steps": {
        "a": {"agent": "f", "with": {"url": "${{ inputs.pri }}"}, "need": ["b"]},
        "b": {"agent": "h", "needs": ["a", "zz"], "with": {"url": "${{ steps.c.output }}"}},
        "c": {"agent": "f", "needs": ["b"], "undo": {"with": {"url": "u"}}, "timeout": "x"},
    },
}


@pytest.mark.parametrize("fmt", ["yaml-block", "yaml-flow", "json-indented", "json-compact"])
def test_every_position_points_at_the_named_key(fmt: str):
    import yaml

    if fmt == "yaml-block":
        text, filename = yaml.safe_dump(BROKEN_DOC, sort_keys=False), "wf.yaml"
    elif fmt == "yaml-flow":
        text = yaml.safe_dump(BROKEN_DOC, sort_keys=False, default_flow_style=True, width=60)
        filename = "wf.yaml"
    else:
        indent = 2 if fmt == "json-indented" else None
        text, filename = json.dumps(BROKEN_DOC, indent=indent), "wf.json"
    lines = problems(text, filename)
    assert len(lines) == 11, lines
    rows = text.split("\n")
    for line in lines:
        m = LINE_RE.match(line)
        assert m is not None
        row, col = int(m["line"]), int(m["col"])
        parts = [p.rstrip("]") for p in re.split(r"[.\[]", m["path"])]
        at = rows[row - 1][col - 1 :]
        if parts[-1].isdigit():  # a list item: points at the item itself
            assert at[:1] not in ("", " ", ","), line
        elif m["msg"] == "required":  # `with.url` does not exist: its nearest parent, the step
            assert at.startswith(("c:", '"c":')), (line, at)
        else:
            assert at.startswith((f"{parts[-1]}:", f'"{parts[-1]}":')), (line, at)
