"""What a dedup stage compares: which columns make a record's text, and how that text is normalised.

- Columns: `text_columns` from the spec, or a default picked from the record's columns
  (`DEFAULT_TEXT_COLUMNS`: Case2Code records compare prompt and answer, instruction + response,
  with code normalisation; a `code` column of sources is compared as code; instruct records
  compare instruction + input + output; anything else with a `text` column compares that).
- Plain text: Unicode NFKC, lower case, every run of whitespace one space, trimmed.
- Code (`code: true`, Python): comments, blank lines and spacing inside lines removed with Python's
  own tokenizer (so a `#` inside a string stays), indentation kept as depth, case kept; source the
  tokenizer cannot read falls back to dropping `#` line comments and collapsing whitespace.
- Words (for MinHash): whitespace-separated tokens with punctuation trimmed from both ends; scripts
  written without spaces (Han, kana, Thai, Lao, Khmer, Myanmar) count one character (with its
  marks) as a word.
"""

from __future__ import annotations

import io
import re
import string
import tokenize
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

DEFAULT_TEXT_COLUMNS: dict[str, tuple[tuple[str, ...], bool]] = {
    # Case2Code records first: they also carry `input` and `output` (a case's call and result).
    "case2code": (("instruction", "response"), True),
    "code": (("code",), True),
    "instruct": (("instruction", "input", "output"), False),
    "text": (("text",), False),
}
"""Record kind -> (columns, code normalisation), tried in this order against a dataset's columns."""

_UNSPACED_SCRIPTS = r"((?:\p{Han}|\p{Hiragana}|\p{Katakana}|\p{Thai}|\p{Lao}|\p{Khmer}|\p{Myanmar})\pM*)"
_PUNCTUATION = string.punctuation + "".join(
    chr(c) for c in range(0x80, 0x10000) if unicodedata.category(chr(c)).startswith("P")
)
"""Trimmed from both ends of a token: ASCII punctuation and symbols, and Unicode punctuation."""
_SKIPPED_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.ENDMARKER}


@dataclass(frozen=True)
class TextSpec:
    """The columns joined into one text per record, and whether they hold code."""

    columns: tuple[str, ...]
    code: bool


def resolve_text(schema: pa.Schema, columns: list[str] | None, code: bool | None) -> TextSpec:
    """Check configured columns against the data, or pick the default for the record kind."""
    names = schema.names
    if columns:
        for name in columns:
            if name not in names:
                raise ValueError(f"text_columns: column {name!r} is not in the data; its columns are {names}")
            if not _is_string(schema.field(name).type):
                type_ = schema.field(name).type
                raise ValueError(f"text_columns: column {name!r} is {type_}, expected a string column")
        return TextSpec(tuple(columns), bool(code))
    for default_columns, default_code in DEFAULT_TEXT_COLUMNS.values():
        if all(c in names and _is_string(schema.field(c).type) for c in default_columns):
            return TextSpec(default_columns, default_code if code is None else code)
    kinds = ", ".join(f"{k}: {list(c)}" for k, (c, _) in DEFAULT_TEXT_COLUMNS.items())
    raise ValueError(f"set text_columns: the data has none of the default columns ({kinds}); its columns are {names}")


def _is_string(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def joined_text(batch: pa.Table, spec: TextSpec) -> pa.Array:
    """One string per row: the text columns (code-normalised for code) joined by newlines; nulls are ""."""
    parts = [batch.column(name).combine_chunks().fill_null("").cast(pa.large_string()) for name in spec.columns]
    if spec.code:
        parts = [pa.array([normalise_code(s) for s in p.to_pylist()], pa.large_string()) for p in parts]
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, pa.scalar("\n", pa.large_string()))


def exact_text(batch: pa.Table, spec: TextSpec) -> pa.Array:
    """What exact dedup hashes: plain text normalised, code as its normalisation left it."""
    joined = joined_text(batch, spec)
    return joined if spec.code else normalise_plain(joined)


def fold(text: pa.Array) -> pa.Array:
    """Unicode NFKC (full-width forms, ligatures, odd spaces to their plain kin), then lower case."""
    return pc.utf8_lower(pc.utf8_normalize(text, form="NFKC"))


def normalise_plain(text: pa.Array) -> pa.Array:
    folded = pc.utf8_trim_whitespace(fold(text))  # else split gives "" for leading and trailing space
    return pc.binary_join(pc.utf8_split_whitespace(folded), pa.scalar(" ", folded.type))


def normalise_code(source: str) -> str:
    """Python source without comments, blank lines or spacing inside lines; indentation as depth."""
    lines, line, depth = [], [], 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in _SKIPPED_TOKENS:
                continue
            if tok.type in (tokenize.INDENT, tokenize.DEDENT):
                depth += 1 if tok.type == tokenize.INDENT else -1
            elif tok.type == tokenize.NEWLINE:
                lines.append("  " * depth + " ".join(line))
                line = []
            else:
                line.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        # Not Python (or broken): still drop `#` comments and spacing, the commonest differences.
        return re.sub(r"\s+", " ", re.sub(r"#[^\n]*", "", source)).strip()
    if line:
        lines.append("  " * depth + " ".join(line))
    return "\n".join(lines)


def word_hashes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """xxh3-64 of each word of each text (folded first), texts one after another, and words per text.

    Splitting on whitespace and trimming punctuation from each distinct token (Arrow
    dictionary-encodes them) is several times faster than a Unicode regex split over all the text.
    """
    if pc.all(pc.string_is_ascii(text)).as_py() is not False:
        lists = pc.ascii_split_whitespace(pc.ascii_lower(text))  # the common case, twice as fast
    else:
        lists = pc.utf8_split_whitespace(pc.replace_substring_regex(fold(text), _UNSPACED_SCRIPTS, r" \1 "))
    rows = pc.list_parent_indices(lists).to_numpy()
    tokens = pc.dictionary_encode(pc.list_flatten(lists))
    distinct = pc.utf8_trim(tokens.dictionary, characters=_PUNCTUATION)
    as_bytes = distinct.cast(pa.large_binary()).to_pylist()
    hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, as_bytes), np.uint64, len(as_bytes))
    indices = tokens.indices.to_numpy()
    kept = pc.not_equal(distinct, "").to_numpy(zero_copy_only=False)[indices]
    counts = np.bincount(rows[kept], minlength=len(text))
    return hashes[indices[kept]], counts
