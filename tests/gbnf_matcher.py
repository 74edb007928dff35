"""A small GBNF matcher for tests: does a string belong to a grammar's language?

It reads the subset of llama.cpp's GBNF that our grammars use (rules `name ::= ...`, "literals",
[character classes] with ranges and ^, groups, |, and the postfixes * + ?, # comments) and
matches by backtracking. It exists so a grammar can be checked here, where no llama.cpp runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z_][A-Za-z0-9_-]*|::=|[()|*+?]')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "]": "]", "[": "[", "-": "-", "^": "^"}


def _unescape(text: str) -> list[str]:
    chars, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            chars.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            chars.append(text[i])
            i += 1
    return chars


class Grammar:
    def __init__(self, text: str):
        tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("#")]
        assert "".join(_TOKEN.sub("", text).split()) == "", "unreadable grammar text"
        self.rules: dict[str, tuple] = {}
        starts = [i for i in range(len(tokens) - 1) if tokens[i + 1] == "::="]
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(tokens)
            self.rules[tokens[start]] = self._alternatives(tokens[start + 2 : end])

    def _alternatives(self, tokens: list[str]) -> tuple:
        alternatives, depth, current = [], 0, []
        for token in tokens:
            depth += token == "("
            depth -= token == ")"
            if token == "|" and depth == 0:
                alternatives.append(current)
                current = []
            else:
                current.append(token)
        alternatives.append(current)
        return ("alt", [self._sequence(a) for a in alternatives])

    def _sequence(self, tokens: list[str]) -> tuple:
        items, i = [], 0
        while i < len(tokens):
            token = tokens[i]
            if token == "(":
                depth, j = 1, i + 1
                while depth:
                    depth += (tokens[j] == "(") - (tokens[j] == ")")
                    j += 1
                node, i = self._alternatives(tokens[i + 1 : j - 1]), j
            elif token.startswith('"'):
                node, i = ("lit", "".join(_unescape(token[1:-1]))), i + 1
            elif token.startswith("["):
                node, i = self._class(token[1:-1]), i + 1
            else:
                node, i = ("ref", token), i + 1
            if i < len(tokens) and tokens[i] in "*+?":
                node = ("rep", node, {"*": 0, "+": 1, "?": 0}[tokens[i]], 1 if tokens[i] == "?" else None)
                i += 1
            items.append(node)
        return ("seq", items)

    @staticmethod
    def _class(body: str) -> tuple:
        negate = body.startswith("^")
        chars = _unescape(body[1:] if negate else body)
        ranges, i = [], 0
        while i < len(chars):
            if i + 2 < len(chars) and chars[i + 1] == "-":
                ranges.append((chars[i], chars[i + 2]))
                i += 3
            else:
                ranges.append((chars[i], chars[i]))
                i += 1
        return ("cls", negate, ranges)

    def matches(self, text: str, rule: str = "root") -> bool:
        return any(end == len(text) for end in self._match(self.rules[rule], text, 0))

    def _match(self, node: tuple, text: str, i: int) -> Iterator[int]:
        kind = node[0]
        if kind == "lit":
            if text.startswith(node[1], i):
                yield i + len(node[1])
        elif kind == "cls":
            if i < len(text) and any(lo <= text[i] <= hi for lo, hi in node[2]) != node[1]:
                yield i + 1
        elif kind == "ref":
            yield from self._match(self.rules[node[1]], text, i)
        elif kind == "alt":
            for sequence in node[1]:
                yield from self._match(sequence, text, i)
        elif kind == "seq":
            yield from self._sequence_ends(node[1], text, i)
        else:
            yield from self._repeat(node[1], node[2], node[3], text, i, 0)

    def _sequence_ends(self, items: list[tuple], text: str, i: int) -> Iterator[int]:
        if not items:
            yield i
            return
        for end in self._match(items[0], text, i):
            yield from self._sequence_ends(items[1:], text, end)

    def _repeat(self, node: tuple, low: int, high: int | None, text: str, i: int, done: int) -> Iterator[int]:
        if high is None or done < high:
            for end in self._match(node, text, i):
                if end > i:  # no empty loops
                    yield from self._repeat(node, low, high, text, end, done + 1)
        if done >= low:
            yield i
