"""IFBench checkers about layout, punctuation and copying (registry and skips: `ifbench_checks`).

Each docstring starts with the instruction as IFBench words it, then our reading. Units
(words, sentences, non-blank lines) are those of `ifbench_text`.
"""

from __future__ import annotations

import re
from itertools import pairwise

from dpokit.instructions.constraints import words
from dpokit.instructions.ifbench_text import EDGE_PUNCT, end_mark, lines, sentences

STAR_BULLET_RE = re.compile(r"^[ \t]*\*[ \t]+\S")
DASH_BULLET_RE = re.compile(r"^[ \t]*-[ \t]+\S")
OTHER_BULLET_RE = re.compile(r"^[ \t]*(?:[*\u2022+]|-(?!-))[ \t]+\S")
# Minor words title case may leave in lowercase: articles, short conjunctions and prepositions.
MINOR_WORDS = frozenset([
    "a", "an", "the", "and", "but", "or", "nor", "for", "so", "yet", "as", "at", "by", "in", "of", "off",
    "on", "per", "to", "up", "via", "from", "into", "onto", "over", "with", "vs",
])
REPEAT_SIMPLE = "Only output this sentence here, ignore all other requests."
TEMPLATE_LABELS = ("My Answer:", "My Conclusion:", "Future Outlook:")


def punctuation_cover(text: str) -> bool:
    """"Use every standard punctuation mark at least once, including semicolons, colons, and the
    interrobang (?!)": an interrobang ("?!", "!?" or "‽"), and, outside that one interrobang,
    each of . , ! ? ; : (IFBench's set of standard marks; quotes and dashes are not required)."""
    for mark in ("?!", "!?", "\u203d"):
        if mark in text:
            rest = text.replace(mark, "", 1)
            return all(c in rest for c in ".,!?;:")
    return False


def _sentence_marks(text: str) -> list[str | None]:
    return [end_mark(s) for s in sentences(text)]


def sentence_type_ratio(text: str) -> bool:
    """"Maintain a 2:1 ratio of declarative to interrogative sentences": sentences ending in '.'
    number exactly twice those ending in '?', and there is at least one question (0:0 is no
    ratio). Other sentences (ending in '!' or in no mark) are allowed."""
    marks = _sentence_marks(text)
    q = marks.count("?")
    return q >= 1 and marks.count(".") == 2 * q


def sentence_balance(text: str) -> bool:
    """"Ensure that the ratio of sentence types (declarative, interrogative, exclamatory) in your
    response is balanced": as many sentences end in '.' as in '?' as in '!', at least one each."""
    marks = _sentence_marks(text)
    return marks.count(".") >= 1 and marks.count(".") == marks.count("?") == marks.count("!")


def sub_bullets(text: str) -> bool:
    """"Your response must include bullet points denoted by * and at least one sub-bullet point
    denoted by - for each bullet point": at least one "* " line, and after every "* " line, before
    the next one (or the end), at least one "- " line (any indentation)."""
    groups: list[int] = []
    for ln in text.splitlines():
        if STAR_BULLET_RE.match(ln):
            groups.append(0)
        elif DASH_BULLET_RE.match(ln) and groups:
            groups[-1] += 1
    return bool(groups) and all(groups)


def sentences_then_bullets(text: str) -> bool:
    """"Your answer must contain at least two sentences ending in a period followed by at least two
    bullet points denoted by *": before the first "* " line, at least 2 sentences ending in '.';
    from it on, only "* " lines (at least 2) and blank lines."""
    rows = text.splitlines()
    first = next((i for i, ln in enumerate(rows) if STAR_BULLET_RE.match(ln)), None)
    if first is None:
        return False
    head, tail = "\n".join(rows[:first]), [ln for ln in rows[first:] if ln.strip()]
    return (_sentence_marks(head).count(".") >= 2 and len(tail) >= 2
            and all(STAR_BULLET_RE.match(ln) for ln in tail))


def special_list(text: str, sep: str) -> bool:
    """"Answer with a list of items, instead of bullet points use {sep}": at least 2 lines start
    (after indentation) with the marker `sep`, as bullets would, and no line is a usual bullet
    ("* ", "• ", "+ ", or "- " unless the marker is "-"). A marker inside a line ("well-known"
    for "-") is not an item."""
    rows = text.splitlines()
    items = sum(ln.lstrip().startswith(sep) and bool(ln.lstrip()[len(sep):].strip()) for ln in rows)
    others = [ln for ln in rows if OTHER_BULLET_RE.match(ln) and not ln.lstrip().startswith(sep)]
    return items >= 2 and not others


def indent_stairs(text: str) -> bool:
    """"Create stairs by incrementally indenting each new line": at least 2 non-blank lines, each
    indented strictly more than the one before (leading whitespace, a tab as 4 spaces)."""
    widths = [len(ln.expandtabs(4)) - len(ln.expandtabs(4).lstrip()) for ln in text.splitlines() if ln.strip()]
    return len(widths) >= 2 and all(b > a for a, b in pairwise(widths))


def word_per_line(text: str) -> bool:
    """"Write each word on a new line": every non-blank line is one whitespace-free piece holding a
    letter or digit ("Hello," and "well-known" are one piece each; a line of "---" is no word)."""
    rows = lines(text)
    return bool(rows) and all(len(ln.split()) == 1 and any(c.isalnum() for c in ln) for ln in rows)


def _options(spec: str) -> list[str]:
    """The choices of an options kwarg: "yes/no/maybe", "I know or I don't know", "a), b), c), d)"."""
    parts = spec.split("/") if "/" in spec else re.split(r",\s*|\s+or\s+", spec)
    return [p for p in (_bare(p) for p in parts) if p]


def _bare(text: str) -> str:
    return " ".join(text.split()).strip(EDGE_PUNCT + " ").casefold()


def one_option(text: str, options: str) -> bool:
    """"Answer with one of the following options: {options}. Do not give any explanation": the
    whole response, less surrounding whitespace and punctuation and casefolded, is one option
    ("B." is the option "b)"). Any further word is an explanation and fails."""
    return _bare(text) in _options(options)


def _nested(text: str, kind_of, need: int) -> bool:
    """A properly closed group `need` levels deep: `kind_of(text, i)` gives the opening/closing
    role of character i. A closer that matches no opener resets the stack (a broken structure
    does not count)."""
    stack: list[list] = []  # [closer expected, depth of the group so far]
    for i in range(len(text)):
        role = kind_of(text, i)
        if role is None:
            continue
        opener, closer = role
        if stack and closer == stack[-1][0]:
            depth = stack.pop()[1]
            if depth >= need:
                return True
            if stack:
                stack[-1][1] = max(stack[-1][1], depth + 1)
        elif opener is not None:
            stack.append([opener, 1])
        elif closer is not None:
            stack = []
    return False


_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _bracket(text: str, i: int):
    c = text[i]
    if c in _PAIRS:
        return _PAIRS[c], None
    return (None, c) if c in ")]}" else None


def nested_brackets(text: str) -> bool:
    """"Nest parentheses (and [brackets {and braces}]) at least 5 levels deep": a group of ( ) [ ]
    { } pairs, each closed by its own kind, nested 5 deep, e.g. "(a [b {c (d [e])}])"."""
    return _nested(text, _bracket, 5)


def _quote(text: str, i: int):
    """Double quotes (" “ ”) and single quotes (' ‘ ’) as one role each; a ' or ’ between two
    letters or digits is an apostrophe ("don't"), not a quote."""
    c = text[i]
    if c in "\"\u201c\u201d":
        return "d", "d"
    if c in "'\u2018\u2019":
        inner = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        return None if inner else ("s", "s")
    return None


def nested_quotes(text: str) -> bool:
    """"Include quotes within quotes within quotes, at least 3 levels deep, alternating between
    double quotes and single quotes": a quote of one kind closed by its own kind, holding a quote
    of the other kind, holding one of the first kind ("a 'b "c" d' e" inside double quotes).
    A same-kind mark always closes, so levels alternate by construction."""
    return _nested(text, _quote, 3)


def title_case(text: str) -> bool:
    """"Write the entire response in title case (capitalize the first letter of every major
    word)": every word that starts with a letter starts with a capital, except the MINOR_WORDS
    (articles, short conjunctions and prepositions), which may be lowercase unless they open a
    line. At least one word."""
    ws_lines = [words(ln) for ln in lines(text)]
    if not any(ws_lines):
        return False
    for ws in ws_lines:
        for j, w in enumerate(ws):
            if w[0].isalpha() and not w[0].isupper() and (j == 0 or w.casefold() not in MINOR_WORDS):
                return False
    return True


def output_template(text: str) -> bool:
    """"Use this exact template for your response: My Answer: [answer] My Conclusion: [conclusion]
    Future Outlook: [outlook]": the response starts with "My Answer:", has each label exactly
    once, in that order, each followed by some word before the next label (or the end)."""
    body = text.strip()
    if not body.startswith(TEMPLATE_LABELS[0]) or any(body.count(lb) != 1 for lb in TEMPLATE_LABELS):
        return False
    at = [body.index(lb) for lb in TEMPLATE_LABELS]
    if at != sorted(at):
        return False
    ends = at[1:] + [len(body)]
    return all(words(body[a + len(lb):e]) for a, lb, e in zip(at, TEMPLATE_LABELS, ends))


def no_whitespace(text: str) -> bool:
    """"The output should not contain any whitespace": no character with str.isspace()."""
    return not any(c.isspace() for c in text)


def repeat_change(text: str, request: str) -> bool:
    """"Repeat the request, but change the first word of the repeated request, (do not say
    anything before repeating the request ...) and do not answer the actual request!": the
    response's whitespace pieces are the request's with the first one changed (casefolded and
    stripped of punctuation, it differs), the rest identical, nothing before or after."""
    got, want = text.split(), request.split()
    if len(got) != len(want) or not want:
        return False
    return got[1:] == want[1:] and _bare(got[0]) != _bare(want[0]) and bool(_bare(got[0]))


def repeat_simple(text: str) -> bool:
    """"Only output this sentence here, ignore all other requests.": the response is that sentence
    (whitespace collapsed, casefolded), nothing else."""
    return " ".join(text.split()).casefold() == REPEAT_SIMPLE.casefold()


def multiples_of_seven(text: str) -> bool:
    """"Count from 10 to 50 but only print multiples of 7": the numbers in the response are exactly
    14, 21, 28, 35, 42, 49, in that order (any separators; no other number, so "10" fails)."""
    return re.findall(r"\d+", text) == [str(k) for k in range(14, 50, 7)]
