"""Pattern matching in bounded time: path globs without backtracking, and regular
expressions checked for catastrophic backtracking before they are used.

A glob translated to one regular expression (`[^/]*a[^/]*a...b`) backtracks
polynomially in the number of stars: `base/*a*a*a*a*a*a*a*a*a*a*b` against a long layer
name runs for hours. Here a path glob is matched segment by segment with `fnmatch`
(whose translation does not backtrack), and a `**` inside a segment by a simulation of
the pattern's automaton, linear in the path's length.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import re._constants as sre_constants  # the parser of `re`; stable since Python 3.11
import re._parser as sre_parse
from collections.abc import Callable

from frostline.errors import PlanError, shorten

__all__ = ["MAX_SELECTOR_CHARS", "MAX_UNBOUNDED_REPEATS", "check_glob", "compile_glob", "compile_regex"]

MAX_SELECTOR_CHARS = 2000
"""The longest selector accepted, in characters."""
MAX_UNBOUNDED_REPEATS = 4
"""The most `*`, `+` or `{n,}` a `re:` pattern may hold: each one multiplies the worst-case
time of a failed match by the path's length."""


def check_glob(pattern: str, text: str) -> None:
    """Refuses a glob whose character class holds a reversed range such as `[2-1]`."""
    i = pattern.find("[")
    while i != -1:
        end = _class_end(pattern, i)
        if end == -1:
            return  # an unclosed `[` is a literal character
        body, k = pattern[i + 1 : end].removeprefix("!"), 0
        while k < len(body):
            if k + 2 < len(body) and body[k + 1] == "-":  # a range consumes three characters
                if body[k] > body[k + 2]:
                    raise PlanError(
                        f"Received the character class {shorten(pattern[i:end + 1])} in selector {shorten(text)}: "
                        f"its range {body[k]}-{body[k + 2]} runs backwards. Expected a range such as "
                        f"[{body[k + 2]}-{body[k]}]."
                    )
                k += 3
            else:
                k += 1
        i = pattern.find("[", end + 1)


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A function telling whether a path matches `pattern` (`*`, `?` and `[...]` stay
    in a segment, `**` crosses segments), in time linear in the path's length."""
    segments = _segments(pattern)
    if any("**" in s and s != "**" for s in segments):
        return functools.partial(_match_tokens, _tokens(pattern))
    # fnmatch's translation of one segment does not backtrack; `match` of it is a fullmatch.
    matchers = tuple(None if s == "**" else re.compile(fnmatch.translate(s)).match for s in segments)
    if None not in matchers:
        return functools.partial(_match_fixed, matchers)
    return functools.partial(_match_segments, matchers)


def _class_end(pattern: str, i: int) -> int:
    """The index of the `]` closing the character class opened at `pattern[i]`, or -1
    (fnmatch's rules: `[!...]` negates, a leading `]` is literal)."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "!":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    return pattern.find("]", j)


def _segments(pattern: str) -> list[str]:
    """`pattern` split at each `/` that is not inside a character class (`[!/]`)."""
    out, start, i = [], 0, 0
    while i < len(pattern):
        if pattern[i] == "[" and (end := _class_end(pattern, i)) != -1:
            i = end + 1
            continue
        if pattern[i] == "/":
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    return out + [pattern[start:]]


def _match_fixed(matchers: tuple, path: str) -> bool:
    segments = path.split("/")
    return len(segments) == len(matchers) and all(m(s) for m, s in zip(matchers, segments))


def _match_segments(matchers: tuple, path: str) -> bool:
    """A whole-segment `**` (None) stands for one or more segments; any other pattern
    segment matches exactly one path segment."""
    segments = path.split("/")
    reach = {0}  # numbers of path segments the pattern so far can have consumed
    for match in matchers:
        if match is None:
            reach = set(range(min(reach) + 1, len(segments) + 1))
        else:
            reach = {j + 1 for j in reach if j < len(segments) and match(segments[j])}
        if not reach:
            return False
    return len(segments) in reach


def _tokens(pattern: str) -> tuple[tuple[str, object], ...]:
    out: list[tuple[str, object]] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            kind = "**" if pattern.startswith("**", i) else "*"
            i += len(kind)
            if out and out[-1][0] in ("*", "**"):  # consecutive stars merge: `***` is `**`
                kind = "**" if "**" in (kind, out[-1][0]) else "*"
                out.pop()
            out.append((kind, None))
            continue
        if c == "[":
            end = _class_end(pattern, i)
            if end != -1:
                out.append(("class", pattern[i : end + 1]))
                i = end + 1
                continue
        out.append(("?", None) if c == "?" else ("char", c))
        i += 1
    return tuple(out)


def _closure(states: set[int], tokens: tuple[tuple[str, object], ...]) -> set[int]:
    # Stars also match nothing; runs of stars were merged, so one step skips a star.
    return states | {i + 1 for i in states if i < len(tokens) and tokens[i][0] in ("*", "**")}


def _match_tokens(tokens: tuple[tuple[str, object], ...], path: str) -> bool:
    states = _closure({0}, tokens)
    for c in path:
        following: set[int] = set()
        for i in states:
            if i == len(tokens):
                continue
            kind, arg = tokens[i]
            if kind == "**" or (kind == "*" and c != "/"):
                following.add(i)
            elif kind == "char" and c == arg:
                following.add(i + 1)
            elif kind in ("?", "class") and c != "/" and (kind == "?" or fnmatch.fnmatchcase(c, arg)):
                following.add(i + 1)
        if not following:
            return False
        states = _closure(following, tokens)
    return len(tokens) in states


_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT}
_UNBOUNDED = sre_constants.MAXREPEAT


def compile_regex(pattern: str, text: str) -> re.Pattern[str]:
    """Compiles a `re:` selector's pattern, refusing what can backtrack catastrophically.

    Refused: a repeat of something that itself repeats a variable number of times
    (`(a+)+`, `(a*)*`, `(\\w+\\s?)*`), a repeat of alternatives that can match the same
    text, two starting with the same character or two matching nothing (`(a|a)*`,
    `(a|.)*`, `(a|ab|b)*`; `re` itself factors `(ab|a)` into `a(?:b|)`, which is fine),
    and more than MAX_UNBOUNDED_REPEATS unbounded repeats in one pattern. These are what
    take a Python regular expression exponential or high-polynomial time on a path it
    does not match.

    Raises:
        PlanError: for a malformed pattern, a repeat count too large, or a refused one.
    """
    example = "e.g. 're:base/block[45]_.*'"
    try:
        parsed = sre_parse.parse(pattern)
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as e:
        raise PlanError(
            f"Received a malformed regular expression in selector {shorten(text)}: {shorten(str(e), quote=False)}. "
            f"Expected `re:` followed by a Python regular expression, {example}."
        ) from None
    problem = _backtracking_problem(parsed)
    if problem:
        raise PlanError(
            f"Refused the regular expression in selector {shorten(text)}: {problem}, which can make matching "
            "take hours on a path it does not match (catastrophic backtracking). Expected a pattern "
            f"without nested or ambiguous repeats, {example}; a path glob (base/**/bias) never backtracks."
        )
    return compiled


def _backtracking_problem(parsed) -> str | None:
    unbounded = 0
    for op, av in _walk(parsed):
        if op in _REPEATS:
            low, high, body = av
            if high == _UNBOUNDED:
                unbounded += 1
            if high > 1 and _varies(body):
                return "a repeat of something that itself repeats a variable number of times, such as (a+)+"
            if high > 1 and _ambiguous_branches(body):
                return "a repeat of alternatives that can match the same text, such as (a|a)*"
    if unbounded > MAX_UNBOUNDED_REPEATS:
        return f"{unbounded} unbounded repeats (*, + or {{n,}}), more than {MAX_UNBOUNDED_REPEATS}"
    return None


def _walk(parsed):
    """Every (op, argument) of a parsed pattern, depth first."""
    for op, av in parsed:
        yield op, av
        for child in _children(op, av):
            yield from _walk(child)


def _children(op, av) -> list:
    if op in _REPEATS or op == sre_constants.POSSESSIVE_REPEAT:
        return [av[2]]
    if op == sre_constants.SUBPATTERN:
        return [av[3]]
    if op == sre_constants.ATOMIC_GROUP:
        return [av]
    if op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
        return [av[1]]
    if op == sre_constants.BRANCH:
        return list(av[1])
    if op == sre_constants.GROUPREF_EXISTS:
        return [b for b in av[1:] if b is not None]
    return []


def _varies(parsed) -> bool:
    """Whether a parsed pattern holds a repeat of variable count (or a backreference)."""
    for op, av in _walk(parsed):
        if op in _REPEATS and av[0] != av[1]:
            return True
        if op == sre_constants.GROUPREF:
            return True
    return False


def _ambiguous_branches(parsed) -> bool:
    """Whether a repeated body holds alternatives that can match the same text: two that
    can start with the same character, or two that can match nothing (`re` factors
    `(a|a)` into `a(?:|)`)."""
    for op, av in _walk(parsed):
        if op != sre_constants.BRANCH:
            continue
        seen: set[int] = set()
        anything = nullable = 0
        for branch in av[1]:
            chars, empty = _first_chars(branch)
            nullable += empty
            if chars is None:
                anything += 1
                if seen or anything > 1:
                    return True
            elif chars & seen or (chars and anything):
                return True
            else:
                seen |= chars
        if nullable > 1:
            return True
    return False


def _first_chars(parsed) -> tuple[set[int] | None, bool]:
    """The code points a parsed pattern can start with (None: any) and whether it can
    match nothing."""
    chars: set[int] = set()
    for op, av in parsed:
        if op == sre_constants.LITERAL:
            return chars | {av}, False
        if op == sre_constants.SUBPATTERN:
            inner, empty = _first_chars(av[3])
        elif op == sre_constants.BRANCH:
            parts = [_first_chars(b) for b in av[1]]
            inner = None if any(c is None for c, _ in parts) else set().union(*(c for c, _ in parts))
            empty = any(e for _, e in parts)
        elif op in _REPEATS or op == sre_constants.POSSESSIVE_REPEAT:
            inner, empty = _first_chars(av[2])
            empty = empty or av[0] == 0
        elif op in (sre_constants.AT, sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            continue  # takes no character
        else:
            return None, False  # a class, a dot, a backreference...: any character
        if inner is None:
            return None, empty
        chars |= inner
        if not empty:
            return chars, False
    return chars, True
