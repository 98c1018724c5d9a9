from __future__ import annotations

import pytest

from spool import InvalidNameError, check_component, encode_component


@pytest.mark.parametrize("good", ["default", "gpu-a100", "node01.w3", "wf_20261123-abc", "a@b+c=d"])
def test_good_components(good):
    assert check_component(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "x\x00y", "x" * 101, ".hidden", " sp", "é", 7])
def test_bad_components(bad):
    with pytest.raises(InvalidNameError):
        check_component(bad, "queue name")


NAMES = [
    "prep/featurize",
    "prep%2Ffeaturize",
    "train/rf",
    "train_rf",
    "sweep/seed[0]",
    "sweep/seed[10]",
    "../../etc/passwd",
    ".",
    "..",
    ".hidden",
    "a" * 500,
    "a" * 499 + "b",
    "名前/タスク",
    "x=1",
    "tab\tname",
]


def test_encoding_is_safe_and_injective():
    encoded = [encode_component(n) for n in NAMES]
    assert len(set(encoded)) == len(NAMES)
    for e in encoded:
        assert "/" not in e and "\x00" not in e
        assert not e.startswith(".")
        assert 0 < len(e) <= 200
    assert encode_component("prep/featurize") == "prep%2Ffeaturize"
    assert encode_component("prep%2Ffeaturize") != encode_component("prep/featurize")


def test_encoding_rejects_empty_and_nul():
    with pytest.raises(InvalidNameError):
        encode_component("")
    with pytest.raises(InvalidNameError):
        encode_component("a\x00b")


def test_every_ascii_character_is_kept_or_escaped_by_the_rule():
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.=-")
    for code in range(1, 128):
        ch = chr(code)
        expected = ch if ch in safe else f"%{code:02X}"
        assert encode_component(f"a{ch}b") == f"a{expected}b"
        assert encode_component(ch) == (expected if ch != "." else "%2E")
    # non-ASCII takes the per-character path: UTF-8 bytes, escaped
    assert encode_component("é.x[1]") == "%C3%A9.x%5B1%5D"
