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
    arithmetic    +  -  *  /  //  %  **   unary - +    ('%03d' % item: printf-style formatting)
    conditional   a if cond else b
    functions     len min max abs all any sum round

Rejected at parse time: any other name or function, names or keys starting with "_"
(so no dunders), lambdas, comprehensions, f-strings, assignments, starred arguments,
keyword arguments, slices. Bounds: 10,000 characters of source, 500 AST nodes, nesting
50 deep.

Evaluation runs on the shared coordinator, so it is bounded before it allocates: every
operation that builds a value (``+ * % **``, ``sum``, list literals, ``round``) computes
the size of its result from its operands first and refuses, with an `ExpressionError`,
what would exceed the bounds: integers up to 4,096 bits, exponents up to 1,000, strings
and lists up to 100,000 items, and any value built up to about 1,000,000 characters as
JSON (`MAX_SIZE`; a list repeated inside a list counts every time it appears, so
``sum([[1]*3000]*3000, [])`` is refused before it copies anything). One evaluation (or
all the holes of one template together) may build and scan at most `MAX_WORK` items,
which keeps any expression to a few milliseconds. Values that come from outside
(outputs, params) are read where they are, never copied.

A lookup of a key or index that does not exist raises `MissingValue`; a condition treats
that as false (the task is skipped and the reason says which key was missing). Inside
``a or b`` an operand that refers to something missing counts as false, so an any-policy
condition such as ``inputs["rf"].mae < 0.1 or inputs["gnn"].mae < 0.1`` holds as soon as
one branch has finished with a good score.

Templates are strings with ``{{ expr }}`` holes (at most `MAX_HOLES` in one string). A
template that is exactly one hole keeps the value's type (``"{{ inputs.A.n }}"`` gives the
int); otherwise each value is turned into text: strings as they are, numbers as JSON,
true/false, null as an empty string, lists and dicts as JSON.

In a shell command string (`Template.render_command`) every value is quoted for the
place it stands in, so an upstream output can never inject shell syntax: in a plain word
it becomes one single-quoted word; inside '...' its quotes are escaped; inside "..." the
double quotes are closed around a single-quoted copy (``"path "'v'""``), and the same
holds inside ``$( )``. Places where a value cannot be quoted safely are refused when the
template is checked (at validation): inside backticks, ``${...}``, arithmetic
``$(( ))``/``(( ))``, ``[[ ]]``, a comment, right after ``$`` or a backslash, ``$'...'``,
and anywhere after a here-document (``<<``) or a construct this scanner cannot follow.
The message says how to write it instead: assign the value to a variable first
(``v={{ x }}; echo "path $v"``).
"""

from __future__ import annotations

import ast
import collections
import functools
import itertools
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from tuiflow.engine import shellquote
from tuiflow.errors import TuiflowError

MAX_SOURCE = 10_000
MAX_NODES = 500
MAX_DEPTH = 50
MAX_INT_BITS = 4096
MAX_EXPONENT = 1000
MAX_LEN = 100_000
#: the largest value an expression may build, in characters of its JSON text (about 1 MB)
MAX_SIZE = 1_000_000
#: what one evaluation may build and scan in all: characters, list items, items measured
MAX_WORK = 2_000_000
#: what walking one item of an outside value (to know its size) costs, in MAX_WORK units
MEASURE_COST = 32
#: conversions (%d, %s...) in one format string
MAX_FORMAT_SPECS = 100
#: round(x, n): |n| at most this
MAX_ROUND_DIGITS = 1000
#: {{ holes }} in one template string
MAX_HOLES = 100

NAMES = frozenset({"inputs", "item", "index", "params"})
_CONSTANT_NAMES = {"true": True, "false": False, "null": None}
_FUNCTIONS = frozenset({"len", "min", "max", "abs", "all", "any", "sum", "round"})
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


def clip(text: str, limit: int = 120) -> str:
    """`text` as it appears in a message: at most `limit` characters, then how many more."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


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
        return ExpressionError(f"{message}{where} in {clip(self.source)!r}")

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
        if isinstance(node.value, int) and node.value.bit_length() > MAX_INT_BITS:
            raise self.fail(node, f"integer literal larger than {MAX_INT_BITS} bits")
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


# ------------------------------------------------------------------ bounded evaluation
def _scalar_size(value: Any) -> int:
    """Characters of a scalar's JSON text (an estimate from above)."""
    if value is None or isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    return 24


class _Budget:
    """What one evaluation (or all holes of one template) has built and scanned so far,
    and the sizes of the containers it has seen (by id, holding them alive)."""

    __slots__ = ("sizes", "work")

    def __init__(self) -> None:
        self.sizes: dict[int, tuple[Any, int]] = {}
        self.work = 0

    def charge(self, units: int) -> None:
        self.work += units
        if self.work > MAX_WORK:
            raise ExpressionError(
                f"expression does too much work (it builds or scans more than {MAX_WORK:,} items)"
            )

    def size(self, value: Any) -> int:
        """The characters of `value` as JSON, every appearance of a shared part counted;
        a container that was not built here is measured once, up to MAX_SIZE + 1."""
        if isinstance(value, str):
            return len(value) + 2
        if isinstance(value, list | tuple | dict | Mapping):
            known = self.sizes.get(id(value))
            if known is not None:
                return known[1]
            size = self._measure(value)
            self.sizes[id(value)] = (value, size)
            return size
        return _scalar_size(value)

    def built(self, value: Any, size: int) -> Any:
        """Record the size of a value just built (computed from its parts)."""
        if size > MAX_SIZE:
            raise ExpressionError(f"result larger than {MAX_SIZE:,} characters")
        self.sizes[id(value)] = (value, size)
        return value

    def _measure(self, root: Any) -> int:
        """Walk a container that was not built here (an output, params), stopping as soon as
        it is larger than MAX_SIZE; each item walked is charged MEASURE_COST."""
        total = 0
        stack = [root]
        while stack and total <= MAX_SIZE:
            v = stack.pop()
            if v is not root and (known := self.sizes.get(id(v))) is not None:
                total += known[1]
                continue
            mapping = isinstance(v, dict | Mapping)
            total += 2 + len(v) * (2 if mapping else 1)
            if total > MAX_SIZE:
                break
            self.charge((len(v) + 1) * MEASURE_COST)
            items = itertools.chain.from_iterable(v.items()) if mapping else v
            for x in items:
                t = type(x)
                if t is str:
                    total += len(x) + 2
                elif t is int:
                    total += x.bit_length() // 3 + 2
                elif t is list or t is dict or isinstance(x, list | tuple | Mapping):
                    stack.append(x)
                else:
                    total += 24
                if total > MAX_SIZE:
                    break
        return min(total, MAX_SIZE + 1)


def _check_len(n: int) -> None:
    if n > MAX_LEN:
        raise ExpressionError(f"result longer than {MAX_LEN:,} items")


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(f"integer result larger than {MAX_INT_BITS} bits")
    if isinstance(value, str | list | tuple) and len(value) > MAX_LEN:
        raise ExpressionError(f"result longer than {MAX_LEN:,} items")
    if isinstance(value, complex):
        raise ExpressionError("result is a complex number")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int)  # bool included: True * 'a' is 'a', as in Python


def _add(a: Any, b: Any, budget: _Budget) -> Any:
    if isinstance(a, str) and isinstance(b, str):
        _check_len(len(a) + len(b))
        budget.charge(len(a) + len(b))
        return a + b
    if isinstance(a, list) and isinstance(b, list):
        _check_len(len(a) + len(b))
        size = budget.size(a) + budget.size(b) - 1
        if size > MAX_SIZE:
            raise ExpressionError(f"result larger than {MAX_SIZE:,} characters")
        budget.charge(len(a) + len(b))
        return budget.built(a + b, size)
    return a + b


def _mul(a: Any, b: Any, budget: _Budget) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | list | tuple) and _is_int(n):
            times = max(int(n), 0)
            _check_len(len(seq) * times)
            budget.charge(len(seq) * times)
            if isinstance(seq, str):
                return seq * times
            size = 2 + max(budget.size(seq) - 2, 0) * times
            if size > MAX_SIZE:
                raise ExpressionError(f"result larger than {MAX_SIZE:,} characters")
            return budget.built(list(seq) * times, size)
    if _is_int(a) and _is_int(b) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise ExpressionError(f"integer result larger than {MAX_INT_BITS} bits")
    return a * b


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


# %[(key)][flags][width][.precision][length]conversion, as Python's printf-style formatting
_SPEC = re.compile(
    r"%(?:\((?P<key>[^()]*)\))?(?P<flags>[-#0 +]*)(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d*))?[hlL]?"
    r"(?P<conv>[diouxXeEfFgGcrsa%])?"
)


def _format(fmt: str, arg: Any, positional: bool, budget: _Budget) -> str:
    """``fmt % arg`` with every piece's size known before it is made. `positional`: the
    right operand was written as a tuple, ``'%s-%s' % (a, b)``."""
    pieces: list[str] = []
    specs: list[tuple[re.Match[str], int]] = []  # (conversion, where its piece goes)
    pos = 0
    for m in _SPEC.finditer(fmt):
        pieces.append(fmt[pos : m.start()])
        pos = m.end()
        conv = m.group("conv")
        if conv is None:
            raise ExpressionError(f"unsupported format at {clip(fmt[m.start() : m.start() + 10])!r}")
        if conv == "%" and m.group(0) == "%%":
            pieces.append("%")
            continue
        if "*" in (m.group("width"), m.group("prec")):
            raise ExpressionError("'*' widths are not allowed in format strings")
        specs.append((m, len(pieces)))
        pieces.append("")
    pieces.append(fmt[pos:])
    if len(specs) > MAX_FORMAT_SPECS:
        raise ExpressionError(f"more than {MAX_FORMAT_SPECS} conversions in one format string")
    keyed = [m.group("key") is not None for m, _ in specs]
    if any(keyed) and not all(keyed):
        raise ExpressionError("format string mixes %(name)s and positional conversions")
    if any(keyed):
        if not isinstance(arg, Mapping):
            raise ExpressionError("a format with %(name)s needs a mapping on the right of %")
        values = []
        for m, _ in specs:
            key = m.group("key")
            if key.startswith("_"):
                raise ExpressionError(f"key {key!r} is not allowed")
            if key not in arg:
                raise MissingValue(f"key {key!r} of the format's mapping")
            values.append(arg[key])
    else:
        values = list(arg) if positional else [arg]
        if len(values) != len(specs) and not (not specs and not positional and isinstance(arg, Mapping)):
            raise ExpressionError(
                f"the format string has {len(specs)} conversion(s) but {len(values)} value(s) are given"
            )
    total = sum(len(p) for p in pieces)
    for (m, _), value in zip(specs, values, strict=True):
        width = int(m.group("width") or 0)
        prec = m.group("prec")
        precision = int(prec or 0) if prec is not None else None
        conv = m.group("conv")
        if conv in "diouxXc":
            digits = value.bit_length() // 3 + 2 if isinstance(value, int) else 330
            text = made = max(width, (precision or 0) + digits)
        elif conv in "eEfFgG":
            text = made = max(width, (precision if precision is not None else 6) + 330)
        elif conv == "s" and isinstance(value, str):
            made = len(value)
            text = max(width, min(made, precision) if precision is not None else made)
        else:  # str() or repr() of anything: escapes may make each character up to 10
            made = 10 * budget.size(value)
            text = max(width, min(made, precision) if precision is not None else made)
        total += text
        if total > MAX_LEN or made > MAX_SIZE:
            raise ExpressionError(f"formatted result longer than {MAX_LEN:,} characters")
    budget.charge(total)
    for (m, at), value in zip(specs, values, strict=True):
        spec = m.group(0)
        if m.group("key") is not None:
            spec = "%" + spec[len(m.group("key")) + 3 :]
        pieces[at] = spec % (value,)
    return "".join(pieces)


def _sum(args: list[Any], budget: _Budget) -> Any:
    if not 1 <= len(args) <= 2:
        raise ExpressionError("sum takes a list and, optionally, a start value")
    items, start = args[0], (args[1] if len(args) == 2 else 0)
    if isinstance(items, list | tuple):
        budget.charge(len(items))
    if not isinstance(start, list | tuple):
        return sum(items, start)  # numbers; a string start is refused by Python itself
    if not isinstance(items, list | tuple):
        raise ExpressionError("sum with a list as start needs a list of lists")
    length = len(start) + sum(map(len, items))
    _check_len(length)
    # a list repeated many times (sum([[1]] * 100000, [])) is checked and measured once
    unique = dict(zip(map(id, items), items, strict=True))
    if not all(isinstance(x, list | tuple) for x in unique.values()):
        raise ExpressionError("sum with a list as start needs a list of lists")
    times = collections.Counter(map(id, items))
    size = budget.size(start) + sum((budget.size(x) - 1) * times[i] for i, x in unique.items())
    if size > MAX_SIZE:
        raise ExpressionError(f"result larger than {MAX_SIZE:,} characters")
    budget.charge(length)
    return budget.built([*start, *itertools.chain.from_iterable(items)], size)


def _round(*args: Any) -> Any:
    if len(args) == 2 and isinstance(args[1], int) and abs(args[1]) > MAX_ROUND_DIGITS:
        raise ExpressionError(f"round(x, n) takes n from -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS}")
    return round(*args)


_SIMPLE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "all": all,
    "any": any,
    "round": _round,
}


@functools.lru_cache(maxsize=4096)
def _parse(source: str) -> tuple[ast.expr, frozenset[str], frozenset[str], frozenset[str], bool]:
    """(tree, names, input refs, param refs, dynamic inputs) of a checked expression; the
    tree is shared by every Expression of the same source and never changed."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        col = f" (column {e.offset})" if e.offset else ""
        raise ExpressionError(f"syntax error in {clip(source)!r}: {e.msg}{col}") from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise ExpressionError(f"expression too deeply nested or invalid: {type(e).__name__}") from None
    checker = _Checker(source)
    try:
        checker.visit(tree)
    except RecursionError:
        raise ExpressionError(f"expression nested deeper than {MAX_DEPTH}") from None
    return (
        tree.body,
        frozenset(checker.names),
        frozenset(checker.input_refs),
        frozenset(checker.param_refs),
        checker.dynamic_inputs,
    )


class Expression:
    """A checked expression, ready to evaluate many times."""

    __slots__ = ("_tree", "dynamic_inputs", "input_refs", "names", "param_refs", "source")

    def __init__(self, source: str):
        if not isinstance(source, str):
            raise ExpressionError(f"expression must be a string, not {type(source).__name__}")
        if len(source) > MAX_SOURCE:
            raise ExpressionError(f"expression longer than {MAX_SOURCE} characters")
        self.source = source
        self._tree, self.names, self.input_refs, self.param_refs, self.dynamic_inputs = _parse(source)

    def evaluate(self, env: Mapping[str, Any], budget: _Budget | None = None) -> Any:
        """Evaluate with `env` giving the values of inputs/item/index/params.

        `budget` is shared by the holes of one template (one is made when not given).

        Raises:
            MissingValue: a looked-up key or index does not exist.
            ExpressionError: a type error or a bound was exceeded.
        """
        return self._evaluate(self._tree, env, budget or _Budget())

    def check_static(self, env: Mapping[str, Any]) -> None:
        """Evaluate every largest part that reads nothing of the run (no inputs, item or
        index: constants and, from `env`, params): whatever the run, it has this value, so
        a part that fails or exceeds the bounds can be refused at validation. A missing
        key is left to the run (a condition reads it as false).

        Raises:
            ExpressionError: a static part fails or exceeds a bound.
        """
        for node in _static_parts(self.source):
            try:
                self._evaluate(node, env, _Budget())
            except MissingValue:
                continue

    def _evaluate(self, node: ast.expr, env: Mapping[str, Any], budget: _Budget) -> Any:
        try:
            return self._eval(node, env, budget)
        except ExpressionError:
            raise
        except RecursionError:
            raise ExpressionError(f"expression too deep to evaluate: {clip(self.source)!r}") from None
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, ArithmeticError) as e:
            raise ExpressionError(
                f"{type(e).__name__} evaluating {clip(self.source)!r}: {clip(str(e))}"
            ) from None

    def _eval(self, node: ast.expr, env: Mapping[str, Any], budget: _Budget) -> Any:
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
            return _lookup(self._eval(node.value, env, budget), node.attr, node)
        if isinstance(node, ast.Subscript):
            container = self._eval(node.value, env, budget)
            return _lookup(container, self._eval(node.slice, env, budget), node)
        if isinstance(node, ast.BoolOp):
            # An operand that looks up something missing counts as false, so that
            # `inputs["a"].ok or inputs["b"].ok` holds as soon as one branch has its data
            # (an any-policy task becomes ready before all its dependencies finished).
            missing: MissingValue | None = None
            if isinstance(node.op, ast.And):
                result: Any = True
                for v in node.values:
                    result = self._eval(v, env, budget)
                    if not result:
                        return result
                return result
            result = False
            for v in node.values:
                try:
                    result = self._eval(v, env, budget)
                except MissingValue as e:
                    missing, result = e, False
                if result:
                    return result
            if missing is not None:
                raise missing
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, env, budget)
            if isinstance(node.op, ast.Not):
                return not operand
            if isinstance(node.op, ast.USub):
                return -operand
            return +operand
        if isinstance(node, ast.BinOp):
            a, b = self._eval(node.left, env, budget), self._eval(node.right, env, budget)
            op = type(node.op)
            if op is ast.Add:
                return _bounded(_add(a, b, budget))
            if op is ast.Mult:
                return _bounded(_mul(a, b, budget))
            if op is ast.Pow:
                return _bounded(_pow(a, b))
            if op is ast.Mod and isinstance(a, str):
                return _bounded(_format(a, b, isinstance(node.right, ast.Tuple), budget))
            return _bounded(_BINOPS[op](a, b))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, env, budget)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comparator, env, budget)
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            test = self._eval(node.test, env, budget)
            return self._eval(node.body if test else node.orelse, env, budget)
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            args = [self._eval(a, env, budget) for a in node.args]
            if node.func.id == "sum":
                return _bounded(_sum(args, budget))
            return _bounded(_SIMPLE_FUNCTIONS[node.func.id](*args))
        if isinstance(node, ast.List | ast.Tuple):
            items = [self._eval(e, env, budget) for e in node.elts]
            budget.charge(len(items))
            return budget.built(items, 2 + sum(budget.size(v) + 1 for v in items))
        raise ExpressionError(f"{type(node).__name__} is not allowed")  # unreachable after checking


#: the names whose values come from the run (the others are constants or params)
_RUN_NAMES = frozenset({"inputs", "item", "index"})


@functools.lru_cache(maxsize=4096)
def _static_parts(source: str) -> tuple[ast.expr, ...]:
    """The largest subtrees of the expression that use none of _RUN_NAMES and compute
    something (a lone constant or name is left out: it builds nothing). One pass, bottom
    up; the trees are _parse's, shared and never changed."""
    parts: list[ast.expr] = []

    def reads_run(node: ast.AST) -> bool:
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
        flags = [reads_run(c) for c in children]
        if (isinstance(node, ast.Name) and node.id in _RUN_NAMES) or any(flags):
            parts.extend(
                c
                for c, f in zip(children, flags, strict=True)
                if not f and not isinstance(c, ast.Constant | ast.Name)
            )
            return True
        return False

    tree = _parse(source)[0]
    if not reads_run(tree) and not isinstance(tree, ast.Constant | ast.Name):
        parts.append(tree)
    return tuple(parts)


def _describe(node: ast.AST) -> str:
    try:
        return clip(ast.unparse(node))
    except Exception:
        return "value"


def _lookup(container: Any, key: Any, node: ast.AST) -> Any:
    if isinstance(key, str) and key.startswith("_"):
        raise ExpressionError(f"key {clip(key)!r} is not allowed")
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
    raise ExpressionError(
        f"{_describe(node)}: cannot look up {clip(repr(key))} in a {type(container).__name__}"
    )


def evaluate_condition(expr: Expression, env: Mapping[str, Any]) -> tuple[bool, str]:
    """(truth, reason): a missing key makes the condition false and says which."""
    try:
        value = expr.evaluate(env)
    except MissingValue as e:
        return False, f"condition {clip(expr.source)!r} is false: {e.path} does not exist"
    if value:
        return True, f"condition {clip(expr.source)!r} is true"
    return False, f"condition {clip(expr.source)!r} is false"


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

    __slots__ = ("_shell", "exprs", "parts", "single", "text")

    def __init__(self, text: str):
        self.text = text
        self.parts: list[str | Expression] = []
        self._shell: tuple[str | tuple[str, str], ...] | None = None
        pos = 0
        for holes, m in enumerate(_HOLE.finditer(text), 1):
            if holes > MAX_HOLES:
                raise ExpressionError(f"more than {MAX_HOLES} {{{{ }}}} in one string")
            if m.start() > pos:
                self.parts.append(text[pos : m.start()])
            if not m.group(1).strip():
                raise ExpressionError(f"empty {{{{ }}}} in {clip(text)!r}")
            self.parts.append(Expression(m.group(1).strip()))
            pos = m.end()
        if pos < len(text):
            rest = text[pos:]
            if "{{" in rest:
                raise ExpressionError(f"unclosed '{{{{' in {clip(text)!r}")
            self.parts.append(rest)
        self.exprs = [p for p in self.parts if isinstance(p, Expression)]
        self.single = len(self.parts) == 1 and bool(self.exprs)

    def shell_places(self) -> tuple[str, ...]:
        """Where each hole stands in this shell command (`shellquote.WORD`, `SINGLE` or `DOUBLE`).

        Raises:
            ExpressionError: a hole stands where no value can be quoted safely; the
                message says which and how to write it instead.
        """
        if self._shell is None:
            literal = [p for p in self.parts if isinstance(p, str)]
            if any(shellquote.MARK in p for p in literal):
                raise ExpressionError("a shell command cannot contain a NUL character")
            skeleton = "".join(p if isinstance(p, str) else shellquote.MARK for p in self.parts)
            self._shell = shellquote.places(skeleton)
        for place, expr in zip(self._shell, self.exprs, strict=True):
            if isinstance(place, tuple):
                src = clip(expr.source, 60)
                raise ExpressionError(
                    f"{{{{ {src} }}}} stands {place[1]} in the shell command, where its value "
                    "cannot be quoted safely: put it in a plain word, '...' or \"...\", or assign it "
                    f'to a variable first and use that (v={{{{ {src} }}}}; ... "$v")'
                )
        return self._shell  # type: ignore[return-value]

    def render(self, env: Mapping[str, Any]) -> Any:
        """The text (or, for a template that is one hole, the value with its type)."""
        if self.single:
            return self.exprs[0].evaluate(env, _Budget())
        return self._text(env, None)

    def render_command(self, env: Mapping[str, Any]) -> str:
        """The text of a command for ``/bin/sh -c``: each value quoted for where it stands
        (`shell_places`), so that it arrives as data whatever it holds."""
        return self._text(env, iter(self.shell_places()))

    def _text(self, env: Mapping[str, Any], places: Iterator[str] | None) -> str:
        budget = _Budget()
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            text = _hole_text(part, part.evaluate(env, budget))
            if places is not None:
                if shellquote.MARK in text:
                    raise ExpressionError(
                        f"{{{{ {clip(part.source, 60)} }}}} gives text with a NUL character"
                    )
                text = shellquote.QUOTE[next(places)](text)  # type: ignore[index]
            out.append(text)
        return "".join(out)


def _hole_text(expr: Expression, value: Any) -> str:
    try:
        return to_text(value)
    except (RecursionError, ValueError) as e:  # an output nested too deep, an int too long
        raise ExpressionError(
            f"{{{{ {clip(expr.source, 60)} }}}}: its value cannot be made text ({type(e).__name__})"
        ) from None


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
