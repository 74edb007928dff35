"""What dedup compares: text columns, normalisation, words in any script, MinHash signatures."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from filters.dedup.signatures import MinHasher, band_keys, estimated_jaccard, signature_keys
from filters.dedup.text import TextSpec, exact_text, normalise_code, resolve_text, word_hashes

INSTRUCT = pa.schema([(name, pa.string()) for name in ("id", "instruction", "input", "output")])


def texts(*values: str) -> pa.Array:
    return pa.array(values, pa.large_string())


def test_default_text_columns_follow_the_record_kind():
    assert resolve_text(INSTRUCT, None, None) == TextSpec(("instruction", "input", "output"), False)
    assert resolve_text(pa.schema([("code", pa.string())]), None, None) == TextSpec(("code",), True)
    case2code = pa.schema([(name, pa.string()) for name in ("instruction", "response", "input", "output")])
    assert resolve_text(case2code, None, None) == TextSpec(("instruction", "response"), True)
    assert resolve_text(pa.schema([("code", pa.string())]), None, False) == TextSpec(("code",), False)
    assert resolve_text(pa.schema([("text", pa.large_string())]), None, None) == TextSpec(("text",), False)


def test_text_column_errors_name_the_column():
    with pytest.raises(ValueError, match=r"column 'answer' is not in the data; its columns are \['id', 'instruction'"):
        resolve_text(INSTRUCT, ["instruction", "answer"], None)
    with pytest.raises(ValueError, match="column 'n' is int64, expected a string column"):
        resolve_text(pa.schema([("n", pa.int64())]), ["n"], None)
    with pytest.raises(ValueError, match="set text_columns"):
        resolve_text(pa.schema([("n", pa.int64())]), None, None)


def test_plain_text_folds_case_width_and_spacing():
    batch = pa.table({"text": ["  Hello\u00a0 WORLD\n", "hello world", "ｈｅｌｌｏ world", "", " \t\n", None]})
    assert exact_text(batch, TextSpec(("text",), False)).to_pylist() == ["hello world"] * 3 + [""] * 3


def test_code_normalisation_strips_comments_and_spacing_but_not_strings():
    plain = "def f(a, b):\n    return a + b\n"
    noisy = "def f( a,b ):  # add\n\n    # the sum\n    return a+b   \n"
    assert normalise_code(plain) == normalise_code(noisy) == "def f ( a , b ) :\n  return a + b"
    assert normalise_code("x = '# not a comment'") != normalise_code("x = ''")
    assert normalise_code("if x:\n    a\nb\n") != normalise_code("if x:\n    a\n    b\n")
    assert normalise_code('s = """never closed\n  # note\n') == 's = """never closed'  # fallback


def test_words_in_spaced_and_unspaced_scripts():
    hashes, counts = word_hashes(texts("Hello, world!", "привет мир", "日本語の文章", "สวัสดีครับ", "", "  ...  "))
    assert counts.tolist() == [2, 2, 6, 7, 0, 0]  # Thai: one word per letter with its marks
    hello, world = word_hashes(texts("hello world"))[0]
    assert hashes[:2].tolist() == [hello, world]  # punctuation and case do not change a word


def shingle_set(words: list[str], n: int = 5) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_estimated_jaccard_tracks_the_true_one():
    rng = np.random.default_rng(0)
    base = [f"w{i}" for i in rng.integers(0, 10_000, 400)]
    hasher = MinHasher(5, 256, seed=1)
    for keep in (400, 300, 200):
        other = base[:keep] + [f"x{i}" for i in range(400 - keep)]
        a, b = shingle_set(base), shingle_set(other)
        true = len(a & b) / len(a | b)
        sigs = hasher.signatures(texts(" ".join(base), " ".join(other)))
        assert estimated_jaccard(sigs[0], sigs[1]) == pytest.approx(true, abs=0.08)


def test_short_empty_and_very_long_texts_get_signatures():
    long_text = " ".join(f"w{i}" for i in range(200_000))
    sigs = MinHasher(5, 64, seed=1).signatures(texts("", "   ", "one two", "one two", "two one", long_text))
    assert sigs.shape == (6, 64)
    keys = signature_keys(sigs)
    assert keys[0] == keys[1] and keys[2] == keys[3]  # no words alike; the same short text alike
    assert len(set(keys[[0, 2, 4, 5]].tolist())) == 4
    assert band_keys(sigs, 16, 4)[2].tolist() == band_keys(sigs, 16, 4)[3].tolist()
