"""Reading workflow files, bounded: YAML and JSON parsed into raw data and a `LineMap` (the
line of each task and field, for messages), with what a hostile file could do refused
before it costs anything: YAML aliases may not expand a file beyond `MAX_ALIAS_NODES`
(an alias bomb is refused before one value is built), recursive aliases are refused, and a
key given twice in YAML or JSON is an error naming both lines (the last one silently
winning would let ``run: rm ...`` hide behind ``run: echo``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import yaml

from tuiflow.engine.expr import clip
from tuiflow.engine.model import (
    Issue,
    WorkflowValidationError,
)

#: nodes YAML aliases may add to a file (beyond those written in it): a few aliases for
#: shared settings are fine, an alias bomb ("billion laughs") is refused before it expands
MAX_ALIAS_NODES = 100_000


# ------------------------------------------------------------------- line numbers
class LineMap:
    """Where things are in a YAML file: the line of each task and of each of its fields."""

    def __init__(self) -> None:
        self.top: dict[str, int] = {}
        self.tasks: list[int] = []
        self.fields: list[dict[str, int]] = []

    def task(self, i: int | None) -> int | None:
        return self.tasks[i] if i is not None and i < len(self.tasks) else None

    def field(self, i: int | None, name: str | None) -> int | None:
        if i is None or i >= len(self.fields):
            return self.top.get(name) if name else None
        return self.fields[i].get(name or "", self.task(i)) if name else self.task(i)

    def top_field(self, name: str | None) -> int | None:
        """A top-level field ("params") or one under defaults ("defaults.queue")."""
        if not name:
            return None
        return self.top.get(name) or self.top.get(name.split(".", 1)[0].split("[", 1)[0])


def _yaml_lines(node: yaml.Node) -> LineMap:
    lines = LineMap()
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key, value in node.value:
        lines.top[str(key.value)] = key.start_mark.line + 1
        if key.value == "defaults" and isinstance(value, yaml.MappingNode):
            lines.top.update({f"defaults.{k.value}": k.start_mark.line + 1 for k, _ in value.value})
        if key.value == "tasks" and isinstance(value, yaml.SequenceNode):
            for item in value.value:
                lines.tasks.append(item.start_mark.line + 1)
                fields = {}
                if isinstance(item, yaml.MappingNode):
                    fields = {str(k.value): k.start_mark.line + 1 for k, _ in item.value}
                lines.fields.append(fields)
    return lines


# ------------------------------------------------------------------------ parsing
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_file(path: str | os.PathLike[str]) -> tuple[Any, LineMap]:
    """Parse a YAML or JSON workflow file into (raw data, line map)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise WorkflowValidationError(source, [Issue("file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise WorkflowValidationError(source, [Issue(f"cannot read: {e}")]) from None
    return parse_text(text, source)


def parse_text(text: str, source: str) -> tuple[Any, LineMap]:
    if source.endswith(".json"):
        return _parse_json(text, source), LineMap()
    data, node = _parse_yaml(text, source)
    return data, _yaml_lines(node) if node is not None else LineMap()


def _parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """(data, its root node). The node graph is checked before any value is built from it:
    aliases that would expand it beyond MAX_ALIAS_NODES, recursive aliases, duplicate keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        if "*" in text:  # an alias may be there: size the graph as if expanded
            _check_nodes(node, source)
        else:
            _check_all_keys(node, source)
        return loader.construct_document(node), node
    except WorkflowValidationError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = e.problem or e.context or "invalid YAML"
        col = f" (column {mark.column + 1})" if mark else ""
        raise WorkflowValidationError(source, [Issue(f"invalid YAML: {problem}{col}", line=line)]) from None
    except yaml.YAMLError as e:
        raise WorkflowValidationError(source, [Issue(f"invalid YAML: {clip(str(e))}")]) from None
    except (ValueError, RecursionError) as e:  # an integer of more digits than Python reads
        raise WorkflowValidationError(source, [Issue(f"invalid YAML: {_value_error(e)}")]) from None
    finally:
        loader.dispose()


def _value_error(e: Exception) -> str:
    if "integer string conversion" in str(e):  # Python's own advice does not apply here
        return "a number with more than 4,300 digits (quote it to make it a string)"
    return clip(str(e))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse duplicate keys, recursive aliases and aliases that expand the document
    beyond MAX_ALIAS_NODES. Walks each node once (an alias is the node it names, shared),
    sizing every node as if the aliases were expanded, before any value is built."""
    sizes: dict[int, int] = {}  # id(node) -> nodes once expanded
    open_nodes: set[int] = set()  # the nodes on the path from the root (to find recursion)
    added = 0  # nodes the aliases add
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            open_nodes.discard(id(node))
            size = 1
            for child in _children(node):
                size += sizes[id(child)]
            sizes[id(node)] = size
            continue
        if id(node) in sizes:  # seen before: this is an alias of it
            added += sizes[id(node)]
            if added > MAX_ALIAS_NODES:
                raise _problem(
                    source,
                    node,
                    f"too many alias expansions: aliases (of the anchor at line "
                    f"{node.start_mark.line + 1} and others) expand the file by more than "
                    f"{MAX_ALIAS_NODES:,} values",
                )
            continue
        if id(node) in open_nodes:
            raise _problem(source, node, "a recursive alias (a value that contains itself)")
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, source)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(_children(node)))


def _check_all_keys(root: yaml.Node, source: str) -> None:
    """Refuse duplicate keys in a document without aliases (a tree: each node once)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, source)
            stack.extend(n for pair in node.value for n in pair if not isinstance(n, yaml.ScalarNode))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(n for n in node.value if not isinstance(n, yaml.ScalarNode))


def _check_keys(node: yaml.MappingNode, source: str) -> None:
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        if key.value in seen:
            raise _problem(
                source, key, f"duplicate key {clip(key.value, 60)!r} (lines {seen[key.value]} and {line})"
            )
        seen[key.value] = line


class _UnsafeYAML(WorkflowValidationError):
    """YAML that parses but must not be built: a key given twice, an alias bomb."""


def _problem(source: str, node: yaml.Node, message: str) -> _UnsafeYAML:
    return _UnsafeYAML(source, [Issue(message, line=node.start_mark.line + 1)])


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return out  # pragma: no cover - a key was given twice


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as e:
        lines = _json_key_lines(text, e.key)
        where = f" (lines {lines[0]} and {lines[1]})" if len(lines) == 2 else ""
        issue = Issue(f"duplicate key {clip(e.key, 60)!r}{where}", line=lines[-1] if lines else None)
        raise WorkflowValidationError(source, [issue]) from None
    except json.JSONDecodeError as e:
        raise WorkflowValidationError(
            source, [Issue(f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno)]
        ) from None
    except RecursionError:
        raise WorkflowValidationError(source, [Issue("invalid JSON: nested too deeply")]) from None
    except ValueError as e:  # an integer of more digits than Python reads
        raise WorkflowValidationError(source, [Issue(f"invalid JSON: {_value_error(e)}")]) from None


def _json_key_lines(text: str, key: str) -> list[int]:
    """The lines of `key` in the first JSON object that has it twice. Read only after the
    parser met the duplicate (the text is valid JSON up to there); JSON strings hold no
    raw newline, so lines are counted outside strings only."""
    open_objects: list[int] = []  # for each open { or [: its offset, or -1 for a [
    found: dict[int, list[int]] = {}
    line, i, n = 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c in "{[":
            open_objects.append(i if c == "{" else -1)
        elif c in "}]" and open_objects:
            open_objects.pop()
        elif c == '"':
            end = _json_string_end(text, i)
            after = text[end : end + 200].lstrip()
            if (
                after.startswith(":")
                and open_objects
                and open_objects[-1] >= 0
                and _json_str(text[i:end]) == key
            ):
                lines = found.setdefault(open_objects[-1], [])
                lines.append(line)
                if len(lines) == 2:
                    return lines
            i = end
            continue
        i += 1
    return []


def _json_string_end(text: str, i: int) -> int:
    """The offset just after the string that starts at i."""
    i += 1
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _json_str(token: str) -> str | None:
    try:
        return json.loads(token)
    except ValueError:
        return None


# ------------------------------------------------------------------ --set values
def parse_set_values(pairs: Iterable[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (3 -> int, true -> bool)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise WorkflowValidationError(
                "--set", [Issue(f"expects key=value, got {clip(pair)!r}", field="params")]
            )
        if not value.strip():
            out[key.strip()] = ""
            continue
        try:
            out[key.strip()] = _parse_yaml(value, f"--set {clip(key.strip(), 40)}")[0]
        except _UnsafeYAML:
            raise
        except WorkflowValidationError:
            out[key.strip()] = value  # not YAML: the text as it is
    return out
