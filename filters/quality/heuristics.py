"""Gopher-style text heuristics (Rae et al. 2021, "Scaling Language Models", appendix A.1.1).

`text_heuristics` measures the text of each record (see `filters.quality.text` for which columns)
and adds one score column per measure; the first rule a record fails is its drop reason.

| column                    | measure                                                    | drop when (default)      |
|---------------------------|------------------------------------------------------------|--------------------------|
| `word_count`              | words with at least one letter or digit                    | < 1 or > 100,000 (a)     |
| `mean_word_length`        | their mean length in characters, punctuation trimmed       | < 2 or > 10 (b)          |
| `hash_word_ratio`         | runs of `#` per whitespace token                           | > 0.1 (c)                |
| `ellipsis_word_ratio`     | `...` and `…` per whitespace token                         | > 0.1                    |
| `non_alpha_word_frac`     | words without a single letter (numbers)                    | > 0.4 (d)                |
| `bullet_line_frac`        | non-blank lines starting with a bullet                     | > 0.9                    |
| `ellipsis_line_frac`      | non-blank lines ending with an ellipsis                    | > 0.3                    |
| `dup_line_frac`           | lines repeating an earlier line                            | > 0.3                    |
| `dup_line_char_frac`      | their share of line characters                             | > 0.2                    |
| `top_{n}gram_char_frac`   | characters covered by the commonest repeated word n-gram   | n=2,3,4: > 0.20/0.18/0.16, from 50 words (e) |
| `dup_{n}gram_char_frac`   | characters covered by all repeated word n-grams            | n=5..10: > 0.15 ... 0.10 |
| `stop_words`              | occurrences of the, be, to, of, and, that, have, with      | < 2, from 20 words (f)   |

Gopher's thresholds, except where short instruction data needs looser ones:
(a) Gopher keeps 50 to 100,000 words; a one-line answer is a fine record, and per-kind length
bounds belong to checks like `instruct_checks`. (b) Gopher: 3; a short answer of short words
("No, it is not.") averages near 2. (c) Gopher counts `#` characters; a Markdown heading `###`
counts once here. (d) Gopher: 0.2; a few numbers weigh heavily in a short answer, and a bullet's
`-` is no word here. (e) Only an n-gram that occurs twice counts: in a ten-word text any bigram
covers ~20% of it. Below 50 words (Gopher's shortest document) the rule is skipped: one 4-gram said
twice is a fifth of a 40-word definition ("-1 indicates a perfect negative correlation, 1
indicates a perfect positive correlation"), and 7 of the 9 such drops in a measured run were right
answers; a short answer that loops is still caught by the duplicated n-gram rules. (f) Below 20
words the stop-word rule is skipped: "Red, yellow, blue." has none and is a fine answer. A
threshold set to null turns its rule off (n-gram rules: leave n out).

Rules for prose only: an answer that is a number, an equation, code or a short label is
measured like any other, but the rules its shape breaks by nature are not applied to it ("77"
is all non-alphabetic words, "x = 3" averages 1.5 letters a word, Python has few stop words).
The shape comes from the answer and from the task that asked for it (the `instruction` and
`input` columns, where the data has them); see `filters.quality.answer_shape` for the shapes
and the rules each one skips, and the `answer_shape` column for each record's. `shape_aware:
false` applies every rule to every record, as Gopher does.

Blank text is dropped as `empty_text` (word_count 0, the other scores null). The thresholds are
for English; any script is measured without error, but Han, kana, Thai and similar scripts count
one character as a word, so their text fails `min_mean_word_length` unless it is set to null.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

import pyarrow as pa
from pydantic import Field

from filters.quality.answer_shape import SKIPPED_RULES, answer_shape
from filters.quality.text import resolve_columns, texts
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FilterStage

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "‣", "◦", "▪", "●", "- ", "* ", "– ")
ELLIPSES = ("...", "…")
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")
"""Trimmed from the ends of a word: anything but letters and digits, in any script."""
_UNSPACED = re.compile(
    r"([\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])"
)
"""Thai, Lao, Myanmar, Khmer, kana and Han: scripts written without spaces between words."""
_HASHES = re.compile(r"#+")
_ENUMERATOR = re.compile(r"^[ \t]*\(?\d{1,3}[.)](?=\s)", re.MULTILINE)
"""An item number opening a line: `1.`, `2)`, `(3)`."""


class TextHeuristicsConfig(StageConfig):
    kind: Literal["text_heuristics"] = "text_heuristics"
    text_columns: list[str] | None = Field(
        None, min_length=1, description="Columns joined (by newlines) into the text measured; default: "
        "response (code records), output (instruct records), else text",
    )  # fmt: skip
    min_words: int | None = Field(1, ge=0, description="Gopher: 50")
    max_words: int | None = Field(100_000, ge=1)
    min_mean_word_length: float | None = Field(2.0, ge=0, description="Gopher: 3")
    max_mean_word_length: float | None = Field(10.0, gt=0)
    max_hash_word_ratio: float | None = Field(0.1, ge=0)
    max_ellipsis_word_ratio: float | None = Field(0.1, ge=0)
    max_non_alpha_word_frac: float | None = Field(0.4, ge=0, le=1, description="Gopher: 0.2")
    max_bullet_line_frac: float | None = Field(0.9, ge=0, le=1)
    max_ellipsis_line_frac: float | None = Field(0.3, ge=0, le=1)
    max_dup_line_frac: float | None = Field(0.3, ge=0, le=1)
    max_dup_line_char_frac: float | None = Field(0.2, ge=0, le=1)
    max_top_ngram_char_frac: dict[int, float] = Field(
        {2: 0.20, 3: 0.18, 4: 0.16}, description="n -> limit on the commonest repeated n-gram's share"
    )
    top_ngram_from_words: int = Field(
        50, ge=0, description="Shorter texts skip the top n-gram rules: one repeated phrase is a large share of them"
    )
    max_dup_ngram_char_frac: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> limit on the share of all repeated n-grams",
    )
    stop_words: tuple[str, ...] = STOP_WORDS
    min_stop_words: int | None = Field(2, ge=0)
    stop_words_from_words: int = Field(20, ge=0, description="Shorter texts skip the stop-word rule")
    shape_aware: bool = Field(True, description="Skip the prose rules for numbers, equations, code and labels")
    task_columns: list[str] = Field(
        ["instruction", "input"], description="Columns (where present) that say what the answer was asked for"
    )


def words_of(text: str) -> tuple[list[str], list[str]]:
    """(whitespace tokens, words): words are tokens trimmed of punctuation, lower case, non-empty.
    A list's numbering ("1.", "2)") is no word, as a bullet's `-` is none."""
    text = _ENUMERATOR.sub("", text)
    tokens = text.split() if text.isascii() else _UNSPACED.sub(r" \1 ", text).split()
    words = [w for w in (_EDGES.sub("", t).lower() for t in tokens) if w]
    return tokens, words


def repeated_lines(lines: list[str]) -> tuple[int, int]:
    """(lines equal to an earlier line, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for line in lines:
        if line in seen:
            count, chars = count + 1, chars + len(line)
        seen.add(line)
    return count, chars


def ngram_char_frac(words: list[str], n: int, top_only: bool) -> float:
    """Share of word characters inside repeated n-grams: the commonest one, or all of them.

    A character in several overlapping occurrences counts once (Gopher's rule)."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    if top_only:
        top, count = counts.most_common(1)[0] if counts else ((), 0)
        repeated = {top} if count >= 2 else set()
    else:
        repeated = {gram for gram, count in counts.items() if count >= 2}
    if not repeated:
        return 0.0
    covered = bytearray(len(words))
    for i, gram in enumerate(grams):
        if gram in repeated:
            covered[i : i + n] = b"\x01" * n
    total = sum(map(len, words))
    return sum(len(w) for w, hit in zip(words, covered) if hit) / total


def measure(text: str, cfg: TextHeuristicsConfig) -> dict[str, float | int | None]:
    """Every score of one text; None where a text has nothing to measure."""
    tokens, words = words_of(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not words:
        return {"word_count": len(words), "stop_words": 0}
    dup_lines, dup_line_chars = repeated_lines(lines)
    stop = set(cfg.stop_words)
    scores: dict[str, float | int | None] = {
        "word_count": len(words),
        "mean_word_length": sum(map(len, words)) / len(words),
        "hash_word_ratio": len(_HASHES.findall(text)) / len(tokens),
        "ellipsis_word_ratio": sum(text.count(e) for e in ELLIPSES) / len(tokens),
        "non_alpha_word_frac": sum(not any(c.isalpha() for c in w) for w in words) / len(words),
        "bullet_line_frac": sum(line.startswith(BULLETS) for line in lines) / len(lines),
        "ellipsis_line_frac": sum(line.endswith(ELLIPSES) for line in lines) / len(lines),
        "dup_line_frac": dup_lines / len(lines),
        "dup_line_char_frac": dup_line_chars / sum(map(len, lines)),
        "stop_words": sum(w in stop for w in words),
    }
    for n in cfg.max_top_ngram_char_frac:
        scores[f"top_{n}gram_char_frac"] = ngram_char_frac(words, n, top_only=True)
    shorter_repeat = 1.0
    for n in sorted(cfg.max_dup_ngram_char_frac):
        # No repeated n-gram means no repeated longer one: skip the work.
        shorter_repeat = ngram_char_frac(words, n, top_only=False) if shorter_repeat else 0.0
        scores[f"dup_{n}gram_char_frac"] = shorter_repeat
    return scores


def drop_reason(text: str, s: dict, cfg: TextHeuristicsConfig, skip: frozenset[str] = frozenset()) -> str | None:
    """The first rule the scores fail, or None; rules named in `skip` do not apply."""
    if not text.strip():
        return "empty_text"

    def over(name: str, limit: float | None) -> bool:
        return limit is not None and s.get(name) is not None and s[name] > limit

    def under(name: str, limit: float | None) -> bool:
        return limit is not None and s.get(name) is not None and s[name] < limit

    rules = [
        ("too_few_words", under("word_count", cfg.min_words)),
        ("too_many_words", over("word_count", cfg.max_words)),
        ("mean_word_length_low", under("mean_word_length", cfg.min_mean_word_length)),
        ("mean_word_length_high", over("mean_word_length", cfg.max_mean_word_length)),
        ("too_many_hashes", over("hash_word_ratio", cfg.max_hash_word_ratio)),
        ("too_many_ellipses", over("ellipsis_word_ratio", cfg.max_ellipsis_word_ratio)),
        ("too_many_non_alpha_words", over("non_alpha_word_frac", cfg.max_non_alpha_word_frac)),
        ("too_many_bullet_lines", over("bullet_line_frac", cfg.max_bullet_line_frac)),
        ("too_many_ellipsis_lines", over("ellipsis_line_frac", cfg.max_ellipsis_line_frac)),
        ("duplicated_lines", over("dup_line_frac", cfg.max_dup_line_frac)
         or over("dup_line_char_frac", cfg.max_dup_line_char_frac)),
        *((f"repeated_{n}gram", s["word_count"] >= cfg.top_ngram_from_words and over(f"top_{n}gram_char_frac", limit))
          for n, limit in sorted(cfg.max_top_ngram_char_frac.items())),
        *((f"duplicated_{n}gram", over(f"dup_{n}gram_char_frac", limit))
          for n, limit in sorted(cfg.max_dup_ngram_char_frac.items())),
        ("too_few_stop_words", s["word_count"] >= cfg.stop_words_from_words and under("stop_words", cfg.min_stop_words)),
    ]  # fmt: skip
    return next((reason for reason, failed in rules if failed and reason not in skip), None)


@register
class TextHeuristics(FilterStage):
    kind = "text_heuristics"
    Config = TextHeuristicsConfig
    description = "Gopher quality heuristics: word counts and lengths, symbols, bullets, repetition, stop words"

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        cfg = self.config
        rows = texts(batch, resolve_columns(batch.schema, cfg.text_columns))
        scores = [measure(text, cfg) for text in rows]
        task_columns = tuple(c for c in cfg.task_columns if c in batch.schema.names)
        tasks = texts(batch, task_columns) if task_columns else [""] * len(rows)
        shapes = [answer_shape(text, task, s["word_count"]) if cfg.shape_aware else "prose"
                  for text, task, s in zip(rows, tasks, scores)]  # fmt: skip
        reasons = [drop_reason(text, s, cfg, SKIPPED_RULES[shape]) for text, s, shape in zip(rows, scores, shapes)]
        return self._columns(scores) | {"answer_shape": pa.array(shapes, pa.string())}, reasons

    def _columns(self, scores: list[dict]) -> dict[str, pa.Array]:
        cfg = self.config
        counts = ("word_count", "stop_words")
        ratios = [
            "mean_word_length", "hash_word_ratio", "ellipsis_word_ratio", "non_alpha_word_frac",
            "bullet_line_frac", "ellipsis_line_frac", "dup_line_frac", "dup_line_char_frac",
            *(f"top_{n}gram_char_frac" for n in sorted(cfg.max_top_ngram_char_frac)),
            *(f"dup_{n}gram_char_frac" for n in sorted(cfg.max_dup_ngram_char_frac)),
        ]  # fmt: skip
        columns = {name: pa.array([s[name] for s in scores], pa.int32()) for name in counts}
        columns |= {name: pa.array([s.get(name) for s in scores], pa.float32()) for name in ratios}
        return columns
