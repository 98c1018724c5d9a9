"""The one safe expression language of conditions and templates.

Source text is parsed with `ast` and every node is checked against a whitelist; nothing
is ever passed to eval/exec. Values are JSON-like data only (dicts, lists, strings,
numbers, booleans, None), so attribute access is a dictionary lookup, never Python
attribute access.

Grammar (a subset of Python expressions)::

    literals      1  2.5  "s"  'prep/featurize'  true false null  True False None  [1, 2]  (1, 2)
    names         inputs  item  index  params
    access        inputs.A.score   inputs["prep/featurize"].metrics["f1-score"]   item[0]
    comparisons   ==  !=  <  <=  >  >=  in  not in     (chains allowed: 0 < x < 1)
    boolean       and  or  not
    arithmetic    +  -  *  /  //  %  **   unary - +
    conditional   a if cond else b
    functions     len min max abs all any sum round

Rejected at parse time: any other name or function, names or keys starting with "_"
(so no dunders), lambdas, comprehensions, f-strings, assignments, starred arguments,
keyword arguments, slices. Bounds: 10,000 characters of source, 500 AST nodes, nesting
50 deep; at run time integers up to 4,096 bits, exponents up to 1,000, strings and lists
up to 100,000 items.

A lookup of a key or index that does not exist raises `MissingValue`; a condition treats
that as false (the task is skipped and the reason says which key was missing). Inside
``a or b`` an operand that refers to something missing counts as false, so an any-policy
condition such as ``inputs["rf"].mae < 0.1 or inputs["gnn"].mae < 0.1`` holds as soon as
one branch has finished with a good score.

Templates are strings with ``{{ expr }}`` holes. A template that is exactly one hole keeps
the value's type (``"{{ inputs.A.n }}"`` gives the int); otherwise each value is turned
into text: strings as they are, numbers as JSON, true/false, null as an empty string,
lists and dicts as JSON. In a shell command string every substituted value is
shell-quoted, so an upstream output can never inject shell syntax.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tuiflow.errors import TuiflowError

MAX_SOURCE = 10_000
MAX_NODES = 500
MAX_DEPTH = 50
MAX_INT_BITS = 4096
MAX_EXPONENT = 1000
MAX_LEN = 100_000

NAMES = frozenset({"inputs", "item", "index", "params"})
_CONSTANT_NAMES = {"true": True, "false": False, "null": None}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "all": all,
    "any": any,
    "sum": sum,
    "round": round,
}
_CMP: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class ExpressionError(TuiflowError, ValueError):
    """The expression is not allowed, or failed at run time (type error, bound exceeded)."""


class MissingValue(ExpressionError):
    """A key or index the expression looked up does not exist."""

    def __init__(self, path: str):
        super().__init__(f"{path} does not exist")
        self.path = path


class _Checker(ast.NodeVisitor):
    """Walks the tree once: rejects what is not whitelisted, collects references."""

    def __init__(self, source: str):
        self.source = source
        self.nodes = 0
        self.depth = 0
        self.names: set[str] = set()
        self.input_refs: set[str] = set()
        self.param_refs: set[str] = set()
        self.dynamic_inputs = False

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        col = getattr(node, "col_offset", None)
        where = f" (at column {col + 1})" if col is not None else ""
        return ExpressionError(f"{message}{where} in {self.source!r}")

    def generic_visit(self, node: ast.AST) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, f"expression too large (more than {MAX_NODES} parts)")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(node, f"expression nested deeper than {MAX_DEPTH}")
        try:
            if not isinstance(node, _ALLOWED):
                raise self.fail(node, f"{type(node).__name__} is not allowed")
            super().generic_visit(node)
        finally:
            self.depth -= 1

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str | int | float | bool | type(None)):
            raise self.fail(node, f"literal of type {type(node.value).__name__} is not allowed")
        if isinstance(node.value, str) and len(node.value) > MAX_LEN:
            raise self.fail(node, "string literal too long")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id not in NAMES and node.id not in _CONSTANT_NAMES and node.id not in _FUNCTIONS:
            raise self.fail(node, f"unknown name {node.id!r} (allowed: {', '.join(sorted(NAMES))})")
        if node.id in NAMES:
            self.names.add(node.id)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            raise self.fail(node, f"attribute {node.attr!r} is not allowed (names starting with '_')")
        self._note_reference(node.value, node.attr)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.slice, ast.Slice):
            raise self.fail(node, "slices are not allowed")
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            if key.value.startswith("_"):
                raise self.fail(node, f"key {key.value!r} is not allowed (names starting with '_')")
            self._note_reference(node.value, key.value)
        elif isinstance(node.value, ast.Name) and node.value.id in ("inputs", "params"):
            if node.value.id == "inputs":
                self.dynamic_inputs = True
            else:
                raise self.fail(node, "params must be indexed by a literal name")
        self.generic_visit(node)

    def _note_reference(self, base: ast.expr, key: str) -> None:
        if isinstance(base, ast.Name):
            if base.id == "inputs":
                self.input_refs.add(key)
            elif base.id == "params":
                self.param_refs.add(key)

    def visit_Call(self, node: ast.Call) -> None:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise self.fail(node, f"only these functions may be called: {', '.join(sorted(_FUNCTIONS))}")
        if node.keywords:
            raise self.fail(node, "keyword arguments are not allowed")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(node, "starred arguments are not allowed")
        self.generic_visit(node)


_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    *_BINOPS,
    ast.Compare,
    *_CMP,
    ast.IfExp,
    ast.Call,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Attribute,
    ast.Subscript,
    ast.List,
    ast.Tuple,
)


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(f"integer result larger than {MAX_INT_BITS} bits")
    if isinstance(value, float) and math.isnan(value):
        return value
    if isinstance(value, str | list | tuple) and len(value) > MAX_LEN:
        raise ExpressionError(f"result longer than {MAX_LEN}")
    return value


def _pow(a: Any, b: Any) -> Any:
    if isinstance(b, int | float) and abs(b) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {b} larger than {MAX_EXPONENT}")
    # bits of an integer result ~ b * bits(a): refuse before computing a huge number
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and b > 0
        and a not in (0, 1, -1)
        and b * max(1, abs(a).bit_length()) > MAX_INT_BITS
    ):
        raise ExpressionError(f"integer result larger than {MAX_INT_BITS} bits")
    return a**b


def _mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_LEN:
            raise ExpressionError(f"result longer than {MAX_LEN}")
    return a * b


class Expression:
    """A checked expression, ready to evaluate many times."""

    __slots__ = ("_tree", "dynamic_inputs", "input_refs", "names", "param_refs", "source")

    def __init__(self, source: str):
        if not isinstance(source, str):
            raise ExpressionError(f"expression must be a string, not {type(source).__name__}")
        if len(source) > MAX_SOURCE:
            raise ExpressionError(f"expression longer than {MAX_SOURCE} characters")
        self.source = source
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as e:
            col = f" (column {e.offset})" if e.offset else ""
            raise ExpressionError(f"syntax error in {source!r}: {e.msg}{col}") from None
        except (RecursionError, MemoryError, ValueError) as e:
            raise ExpressionError(f"expression too deeply nested or invalid: {type(e).__name__}") from None
        checker = _Checker(source)
        try:
            checker.visit(tree)
        except RecursionError:
            raise ExpressionError(f"expression nested deeper than {MAX_DEPTH}") from None
        self._tree = tree.body
        self.names = frozenset(checker.names)
        self.input_refs = frozenset(checker.input_refs)
        self.param_refs = frozenset(checker.param_refs)
        self.dynamic_inputs = checker.dynamic_inputs

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """Evaluate with `env` giving the values of inputs/item/index/params.

        Raises:
            MissingValue: a looked-up key or index does not exist.
            ExpressionError: a type error or a bound was exceeded.
        """
        try:
            return self._eval(self._tree, env)
        except ExpressionError:
            raise
        except RecursionError:
            raise ExpressionError(f"expression too deep to evaluate: {self.source!r}") from None
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, ArithmeticError) as e:
            raise ExpressionError(f"{type(e).__name__} evaluating {self.source!r}: {e}") from None

    def _eval(self, node: ast.expr, env: Mapping[str, Any]) -> Any:
        """The value of `node`. One function over every node type the checker allows, on
        purpose (longer than most): it reads as the one list of what an expression can do."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in _CONSTANT_NAMES:
                return _CONSTANT_NAMES[node.id]
            if node.id not in env:
                raise MissingValue(node.id)
            return env[node.id]
        if isinstance(node, ast.Attribute):
            return _lookup(self._eval(node.value, env), node.attr, node)
        if isinstance(node, ast.Subscript):
            return _lookup(self._eval(node.value, env), self._eval(node.slice, env), node)
        if isinstance(node, ast.BoolOp):
            # An operand that looks up something missing counts as false, so that
            # `inputs["a"].ok or inputs["b"].ok` holds as soon as one branch has its data
            # (an any-policy task becomes ready before all its dependencies finished).
            missing: MissingValue | None = None
            if isinstance(node.op, ast.And):
                result: Any = True
                for v in node.values:
                    result = self._eval(v, env)
                    if not result:
                        return result
                return result
            result = False
            for v in node.values:
                try:
                    result = self._eval(v, env)
                except MissingValue as e:
                    missing, result = e, False
                if result:
                    return result
            if missing is not None:
                raise missing
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, env)
            if isinstance(node.op, ast.Not):
                return not operand
            if isinstance(node.op, ast.USub):
                return -operand
            return +operand
        if isinstance(node, ast.BinOp):
            a, b = self._eval(node.left, env), self._eval(node.right, env)
            if isinstance(node.op, ast.Pow):
                return _bounded(_pow(a, b))
            if isinstance(node.op, ast.Mult):
                return _bounded(_mul(a, b))
            return _bounded(_BINOPS[type(node.op)](a, b))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, env)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comparator, env)
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self._eval(node.body if self._eval(node.test, env) else node.orelse, env)
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            args = [self._eval(a, env) for a in node.args]
            return _bounded(_FUNCTIONS[node.func.id](*args))
        if isinstance(node, ast.List | ast.Tuple):
            return [self._eval(e, env) for e in node.elts]
        raise ExpressionError(f"{type(node).__name__} is not allowed")  # unreachable after checking


def _describe(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:
        return "value"


def _lookup(container: Any, key: Any, node: ast.AST) -> Any:
    if isinstance(key, str) and key.startswith("_"):
        raise ExpressionError(f"key {key!r} is not allowed")
    if isinstance(container, Mapping):
        if not isinstance(key, str):
            raise ExpressionError(f"{_describe(node)}: keys of an object must be strings, not {key!r}")
        try:
            return container[key]
        except KeyError:
            raise MissingValue(_describe(node)) from None
    if isinstance(container, list | tuple | str):
        if isinstance(key, bool) or not isinstance(key, int):
            raise ExpressionError(f"{_describe(node)}: list index must be an integer")
        try:
            return container[key]
        except IndexError:
            raise MissingValue(_describe(node)) from None
    if container is None:
        raise MissingValue(_describe(node))
    raise ExpressionError(f"{_describe(node)}: cannot look up {key!r} in a {type(container).__name__}")


def evaluate_condition(expr: Expression, env: Mapping[str, Any]) -> tuple[bool, str]:
    """(truth, reason): a missing key makes the condition false and says which."""
    try:
        value = expr.evaluate(env)
    except MissingValue as e:
        return False, f"condition {expr.source!r} is false: {e.path} does not exist"
    if value:
        return True, f"condition {expr.source!r} is true"
    return False, f"condition {expr.source!r} is false"


# --------------------------------------------------------------------------- templates
_HOLE = re.compile(r"\{\{(.*?)\}\}", re.S)


def to_text(value: Any) -> str:
    """How a value appears inside a string."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Template:
    """A string with ``{{ expr }}`` holes."""

    __slots__ = ("exprs", "parts", "single", "text")

    def __init__(self, text: str):
        self.text = text
        self.parts: list[str | Expression] = []
        pos = 0
        for m in _HOLE.finditer(text):
            if m.start() > pos:
                self.parts.append(text[pos : m.start()])
            if not m.group(1).strip():
                raise ExpressionError(f"empty {{{{ }}}} in {text!r}")
            self.parts.append(Expression(m.group(1).strip()))
            pos = m.end()
        if pos < len(text):
            rest = text[pos:]
            if "{{" in rest:
                raise ExpressionError(f"unclosed '{{{{' in {text!r}")
            self.parts.append(rest)
        self.exprs = [p for p in self.parts if isinstance(p, Expression)]
        self.single = len(self.parts) == 1 and bool(self.exprs)

    def render(self, env: Mapping[str, Any], *, shell: bool = False) -> Any:
        if self.single and not shell:
            return self.exprs[0].evaluate(env)
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                text = to_text(part.evaluate(env))
                out.append(shlex.quote(text) if shell else text)
        return "".join(out)


def has_template(text: Any) -> bool:
    return isinstance(text, str) and "{{" in text


def strings_in(value: Any) -> Iterable[str]:
    """Every string inside a (nested) JSON-like value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def render_value(value: Any, env: Mapping[str, Any]) -> Any:
    """Render every template in a (nested) JSON-like value; single holes keep their type."""
    if isinstance(value, str):
        return Template(value).render(env) if has_template(value) else value
    if isinstance(value, dict):
        return {k: render_value(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, env) for v in value]
    return value
