"""Where a ``{{ hole }}`` of a shell command stands, and how its value is quoted there.

A template's value is substituted into a command that ``/bin/sh -c`` runs, so it must
arrive as data whatever it holds (``$(...)``, backticks, quotes, newlines). `places`
reads the command with NUL marking each hole and follows POSIX sh quoting (and the bash
extensions that change it): a hole stands in a plain word (`WORD`: the value becomes one
single-quoted word), inside ``'...'`` (`SINGLE`: its quotes are escaped) or inside
``"..."`` (`DOUBLE`: the double quotes are closed around a single-quoted copy,
``"path "'v'""``), also inside ``$( )``. Every place where no quoting is safe (backticks,
``${...}``, arithmetic, ``[[ ]]``, a comment, right after ``$`` or a backslash, ``$'...'``)
and anything after a construct the scanner cannot follow (a here-document) is refused,
with the reason; `tuiflow.engine.expr.Template.shell_places` turns that into the error
a user sees at validation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

#: where a hole stands in a shell command: a plain word, inside '...', inside "..."
WORD, SINGLE, DOUBLE = "word", "single", "double"
MARK = "\x00"  # a hole, in the command text the scanner reads (a NUL cannot be in a command)
_WORD_BREAK = frozenset(" \t\n;&|()<>")


class ShellScan:
    """Finds where each hole of a shell command stands, following POSIX sh quoting (and
    the bash extensions that change it). Every place it cannot follow for certain is
    refused: after one, every later hole is refused too."""

    def __init__(self, text: str):
        self.s = text
        self.n = len(text)
        self.places: list[str | tuple[str, str]] = []  # per hole: a context or ("refused", why)
        self.lost: str | None = None  # what made the rest of the command impossible to follow
        self.inside: str | None = None  # a construct where no hole may stand, however quoted

    def run(self) -> list[str | tuple[str, str]]:
        self.unquoted(0, nested=False)
        return self.places

    def hole(self, context: str, why: str | None = None) -> None:
        why = why or self.inside
        if self.lost is not None:
            self.places.append(("refused", f"after {self.lost}, which tuiflow cannot follow"))
        elif why is not None:
            self.places.append(("refused", why))
        else:
            self.places.append(context)

    def lose(self, what: str) -> None:
        if self.lost is None:
            self.lost = what

    def at_word(self, i: int, word: str) -> bool:
        """Whether `word` stands at i as a whole word."""
        end = i + len(word)
        return self.s.startswith(word, i) and (end >= self.n or self.s[end] in _WORD_BREAK)

    def unquoted(self, i: int, nested: bool) -> int:
        """Unquoted text from i; `nested`: inside $( ), returns after its closing )."""
        s, n = self.s, self.n
        depth, word_start, outside_test = 0, True, self.inside
        while i < n:
            c = s[i]
            if c == MARK:
                self.hole(WORD, "right after $" if i > 0 and s[i - 1] == "$" else None)
                i, word_start = i + 1, False
                continue
            if c == "\\":
                if i + 1 < n and s[i + 1] == MARK:
                    self.hole(WORD, "right after a backslash")
                i, word_start = i + 2, False
                continue
            if c == "'":
                i, word_start = self.single(i + 1), False
                continue
            if c == '"':
                i, word_start = self.double(i + 1), False
                continue
            if c == "`":
                i, word_start = self.backticks(i + 1), False
                continue
            if c == "$":
                i, word_start = self.dollar(i), False
                continue
            if c == "#" and word_start:
                i = self.comment(i)
                continue
            if c == "<" and s.startswith("<<", i):
                if s.startswith("<<<", i):
                    i += 3
                else:
                    self.lose("a here-document (<<)")
                    i += 2
                word_start = True
                continue
            if word_start and s.startswith("((", i):
                i = self.arithmetic(i + 2)
                continue
            if word_start and self.at_word(i, "[["):
                # bash evaluates [[ ]] operands as arithmetic (a[$(cmd)]): quoting cannot help
                self.inside, i = "inside [[ ]]", i + 2
                continue
            if word_start and self.at_word(i, "]]"):
                self.inside, i = outside_test, i + 2
                continue
            if nested and word_start and self.at_word(i, "case"):
                self.lose("'case' inside $( )")
            if nested and c == "(":
                depth += 1
            elif nested and c == ")":
                if depth == 0:
                    self.inside = outside_test
                    return i + 1
                depth -= 1
            word_start = c in _WORD_BREAK
            i += 1
        if nested:
            self.lose("an unclosed $(")
        return i

    def single(self, i: int) -> int:
        end = self.s.find("'", i)
        if end < 0:
            self.lose("an unclosed '")
            end = self.n
        for _ in range(self.s.count(MARK, i, end)):
            self.hole(SINGLE)
        return end + 1

    def double(self, i: int) -> int:
        s, n = self.s, self.n
        while i < n:
            c = s[i]
            if c == '"':
                return i + 1
            if c == "\\":
                if i + 1 < n and s[i + 1] == MARK:
                    self.hole(DOUBLE, "right after a backslash")
                i += 2
            elif c == MARK:
                self.hole(DOUBLE, "right after $" if s[i - 1] == "$" else None)
                i += 1
            elif c == "`":
                i = self.backticks(i + 1)
            elif c == "$":
                i = self.dollar(i)
            else:
                i += 1
        self.lose('an unclosed "')
        return n

    def dollar(self, i: int) -> int:
        """A $ at i: $(( )), $( ), ${ }, $'...', $"..." or a plain $."""
        s = self.s
        if s.startswith("$((", i):
            return self.arithmetic(i + 3)
        nxt = s[i + 1 : i + 2]
        if nxt == "(":
            return self.unquoted(i + 2, nested=True)
        if nxt == "{":
            return self.braces(i + 2)
        if nxt == "[":
            self.lose("$[ ] arithmetic")  # bash's old arithmetic: its text is evaluated as code
            return i + 2
        if nxt in ("'", '"'):
            self.lose(f"{nxt}...{nxt} quoting after $")  # bash and dash read these differently
            return self.single(i + 2) if nxt == "'" else self.double(i + 2)
        return i + 1

    def backticks(self, i: int) -> int:
        s, n = self.s, self.n
        start = i
        while i < n and s[i] != "`":
            if s[i] == MARK:
                self.hole(WORD, "inside backticks")
            i += 2 if s[i] == "\\" and i + 1 < n and s[i + 1] != MARK else 1
        if i >= n:
            self.lose("an unclosed `")
        elif any(ch in s[start:i] for ch in "'\"$#<(\\"):
            self.lose("a `...` command substitution (write $(...) instead)")
        return i + 1

    def braces(self, i: int) -> int:
        """${...}: no hole inside; quotes or substitutions inside make the rest unknown."""
        s, n = self.s, self.n
        depth = 0
        while i < n:
            c = s[i]
            if c == MARK:
                self.hole(WORD, "inside ${...}")
            elif c in "'\"`$\\":
                self.lose("quotes or substitutions inside ${...}")
            elif c == "{":
                depth += 1
            elif c == "}":
                if depth == 0:
                    return i + 1
                depth -= 1
            i += 1
        self.lose("an unclosed ${")
        return n

    def arithmetic(self, i: int) -> int:
        """After $(( or ((: no hole inside (bash evaluates its text as code)."""
        s, n = self.s, self.n
        depth = 2
        while i < n:
            c = s[i]
            if c == MARK:
                self.hole(WORD, "inside arithmetic (( ))")
            elif c in "'\"`$\\":
                self.lose("quotes or substitutions inside (( ))")
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        self.lose("an unclosed ((")
        return n

    def comment(self, i: int) -> int:
        end = self.s.find("\n", i)
        end = self.n if end < 0 else end
        for _ in range(self.s.count(MARK, i, end)):
            self.hole(WORD, "inside a comment")
        return end


@functools.lru_cache(maxsize=1024)
def places(skeleton: str) -> tuple[str | tuple[str, str], ...]:
    return tuple(ShellScan(skeleton).run())


def quote_word(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


QUOTE: dict[str, Callable[[str], str]] = {
    WORD: quote_word,
    SINGLE: lambda text: text.replace("'", "'\"'\"'"),
    DOUBLE: lambda text: '"' + quote_word(text) + '"',
}
