"""Safe path components.

Two kinds of names reach the filesystem:

* identifiers we mint or users pick for queues, workers and workflows: validated by
  `check_component` and used verbatim (``[A-Za-z0-9][A-Za-z0-9_.@+=-]*``, at most 100
  characters, never ``.``/``..``);
* free-form names such as task names (``prep/featurize``, ``sweep/seed[3]``): mapped by
  `encode_component` to exactly one safe component. The mapping is injective: distinct
  names never share a directory.

No name, id or message field can escape its directory: `/`, NUL, ``..`` and leading dots
never survive either function.
"""

from __future__ import annotations

import hashlib
import re

from .errors import InvalidNameError

MAX_COMPONENT = 100
_COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=-]*\Z")
_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.=-")
# Leaves room below NAME_MAX (255) for an attempt suffix and temp-name decorations.
_MAX_ENCODED = 180
_ASCII_ESCAPES = {c: f"%{c:02X}" for c in range(128) if chr(c) not in _SAFE_CHARS}


def check_component(name: object, what: str = "name") -> str:
    """Return `name` if it is a safe single path component, else raise `InvalidNameError`.

    Parameters:
        name: the candidate.
        what: what the name is for ("queue name", "worker id"...), used in the message.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a string, got {type(name).__name__}")
    if "\x00" in name:
        raise InvalidNameError(f"{what} {name!r} contains a NUL byte")
    if len(name) > MAX_COMPONENT:
        raise InvalidNameError(f"{what} is {len(name)} characters long; the limit is {MAX_COMPONENT}")
    if not _COMPONENT_RE.match(name) or name in (".", ".."):
        raise InvalidNameError(
            f"{what} {name!r} is not allowed: use letters, digits and _ . @ + = -, "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name


def encode_component(name: str) -> str:
    """Map an arbitrary non-empty name to one safe, unique path component.

    Characters outside ``[A-Za-z0-9_.=-]`` become ``%XX`` (UTF-8 bytes); a leading dot is
    escaped too. Results longer than 180 characters keep a readable prefix and end in
    ``~`` plus 20 hex digits of the SHA-256 of the name.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("name must be a non-empty string")
    if "\x00" in name:
        raise InvalidNameError(f"name {name!r} contains a NUL byte")
    if name.isascii():  # the common case, in one C call
        encoded = name.translate(_ASCII_ESCAPES)
        if encoded[0] == ".":
            encoded = "%2E" + encoded[1:]
        if len(encoded) <= _MAX_ENCODED:
            return encoded
        return _shorten(name, encoded)
    parts = []
    for i, ch in enumerate(name):
        if ch in _SAFE_CHARS and not (i == 0 and ch == "."):
            parts.append(ch)
        else:
            parts.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    encoded = "".join(parts)
    if len(encoded) > _MAX_ENCODED:
        return _shorten(name, encoded)
    return encoded


def _shorten(name: str, encoded: str) -> str:
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:20]
    return encoded[: _MAX_ENCODED - 21].rstrip("%0123456789ABCDEF") + "~" + digest
