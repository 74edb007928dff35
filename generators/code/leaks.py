"""No leaked answers: what a prompt shows of a function must not give away the answer it asks for.

A function's docstring often holds doctest examples (`>>> f(3)` then `6`), and comments may show
results (`# f(3) -> 6`). Inputs taken from those doctests would then be asked about with their
answer in plain view. So the source a prompt shows is `shown_source(source, name)`: docstring
examples (the `>>>` lines, their `...` continuations and the output lines after them, and an
`Examples:` heading left with nothing under it) and comments that show results (an arrow, `==`,
"returns", or a call of the function) are cut out; code is untouched.

`answer_in_prompt` then checks the finished prompt, and `case2code` drops what still leaks with
the reason `answer_in_prompt`. A predict-output prompt leaks when, outside its `Call:` line, it
shows the asked call itself (in any quoting or spacing), a line that is the answer's value alone
(`'abc'` and `"abc"` alike), or, in a comment or docstring, the answer's value after an arrow
(`-> 'abc'`, `== 'abc'`): "return False otherwise" is a rule, not this input's answer. A prompt
whose answer is a function leaks when it shows that function whole.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

from generators.code.calls import CallError, format_call, parse_call

_PROMPT = re.compile(r"^\s*>>>")
_HEADING = re.compile(r"^\s*(examples?|example usage|usage|for example|doctests?)\s*:{0,2}\s*$", re.IGNORECASE)
_RESULT_MARK = re.compile(r"->|=>|==|>>>|\breturns?\b|\bgives\b|\byields\b|\bresults?\b|\boutputs?\b", re.IGNORECASE)
_ARROW = re.compile(r"->|=>|==|>>>")
_QUOTES = re.compile(r"[rRuU]?(\"\"\"|''')")
_END_PUNCTUATION = " \t.,;:`"


def shown_source(source: str, name: str) -> str:
    """`source` without docstring examples and result comments (`source` itself if cutting breaks it)."""
    lines = source.split("\n")
    examples = _docstring_example_lines(source, lines)
    comments = _result_comments(source, name)
    if not examples and not comments:
        return source
    kept = []
    for number, line in enumerate(lines, 1):
        if number in examples:
            continue
        if number in comments:
            line = line[: comments[number]].rstrip()
            if not line:
                continue  # the line was only the comment
        kept.append(line)
    text = "\n".join(kept)
    try:
        ast.parse(text)
    except SyntaxError:
        return source
    return text


def answer_in_prompt(fmt: str, instruction: str, response: str, call: str, name: str, shown: str) -> bool:
    """Whether a prompt gives its answer away; `shown` is the source it shows (see the module's docstring)."""
    if fmt != "predict_output":
        return response.strip() in instruction
    lines = instruction.split("\n")
    asked = [i for i, line in enumerate(lines) if call in line][-1:]  # the question's own line: the last
    others = [line for i, line in enumerate(lines) if i not in asked]
    if _shows_call(others, call, name) or any(_is_value(line, response) for line in others):
        return True
    return any(_is_value(_after_arrow(line), response) for line in _prose_lines(shown))


# ---------------------------------------------------------------- cutting examples and comments


def _docstring_example_lines(source: str, lines: list[str]) -> set[int]:
    """1-based numbers of the doctest example lines in the docstrings of `source`."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    drop: set[int] = set()
    for start, end in _docstring_spans(tree):
        drop |= _example_lines(lines, start, end)
    return drop


def _docstring_spans(tree: ast.AST) -> list[tuple[int, int]]:
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                spans.append((first.lineno, first.end_lineno))
    return spans


def _example_lines(lines: list[str], start: int, end: int) -> set[int]:
    """Example lines among docstring lines `start`..`end`; the lines holding the quotes stay."""
    drop: set[int] = set()
    number = start + 1
    while number < end:
        if not _PROMPT.match(lines[number - 1]):
            number += 1
            continue
        block = number
        number += 1
        while number < end and lines[number - 1].strip() and not _PROMPT.match(lines[number - 1]):
            number += 1  # `...` continuations and the expected output, up to a blank line
        drop.update(range(block, number))
        heading = next((n for n in range(block - 1, start, -1) if n not in drop and lines[n - 1].strip()), None)
        if heading is not None and _HEADING.match(lines[heading - 1]):
            drop.add(heading)
    return drop | _blank_lines_left_double(lines, start, end, drop)


def _blank_lines_left_double(lines: list[str], start: int, end: int, drop: set[int]) -> set[int]:
    """Blank lines that would sit beside another blank line (or the closing quotes) once `drop` is cut."""
    kept = [n for n in range(start + 1, end + 1) if n not in drop]
    blank = {n for n in kept if not lines[n - 1].strip()}
    return {n for n, after in zip(kept, kept[1:])
            if n in blank and (after in blank or after == end) and drop & set(range(n, after))}  # fmt: skip


def _result_comments(source: str, name: str) -> dict[int, int]:
    """Line number -> column where a comment that shows a result starts."""
    call = re.compile(r"(?<![\w.])" + re.escape(name) + r"\s*\(")
    return {
        token.start[0]: token.start[1]
        for token in _tokens(source)
        if token.type == tokenize.COMMENT and (_RESULT_MARK.search(token.string) or call.search(token.string))
    }


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return []


# ---------------------------------------------------------------- finding the answer


def _shows_call(lines: list[str], call: str, name: str) -> bool:
    """Whether some line holds a call that reads as `call` once written canonically."""
    pattern = re.compile(r"(?<![\w.])" + re.escape(name) + r"\s*\(")
    for line in lines:
        for match in pattern.finditer(line):
            text = line[match.start() :]
            for end in [i for i, ch in enumerate(text) if ch == ")"][::-1]:
                try:
                    args, kwargs = parse_call(text[: end + 1], name)
                except CallError:
                    continue
                if format_call(name, args, kwargs) == call:
                    return True
                break
    return False


def _is_value(text: str, answer: str) -> bool:
    """Whether `text` is a literal whose canonical repr is `answer` (`"abc"` is `'abc'`)."""
    text = text.strip()
    if text == answer:
        return True
    text = text.strip(_END_PUNCTUATION)
    if not text:
        return False
    try:
        return repr(ast.literal_eval(text)) == answer
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _after_arrow(line: str) -> str:
    """What follows the last arrow (`->`, `=>`, `==`) of a line ("" when it has none)."""
    marks = list(_ARROW.finditer(line))
    return line[marks[-1].end() :] if marks else ""


def _prose_lines(source: str) -> list[str]:
    """The comment and docstring lines of `source`, comments without their `#`."""
    lines = source.split("\n")
    prose = [t.string.lstrip("#") for t in _tokens(source) if t.type == tokenize.COMMENT]
    try:
        spans = _docstring_spans(ast.parse(source))
    except SyntaxError:
        spans = [(1, len(lines))]
    return prose + [_QUOTES.sub("", line) for start, end in spans for line in lines[start - 1 : end]]
