"""IFBench checkers about words and sentences (registry and skips: `ifbench_checks`).

Each docstring starts with the instruction as IFBench words it, then our reading. Words,
letter words and sentences are the units of `ifbench_text`; word comparisons are casefolded.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise

from dpokit.instructions.constraints import same_word, words
from dpokit.instructions.ifbench_text import letter_words, lines, sentences

CONJUNCTIONS = frozenset({"and", "but", "for", "nor", "or", "so", "yet"})  # FANBOYS
PRONOUNS = frozenset({
    "i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves", "you", "your", "yours", "yourself",
    "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its", "itself", "they",
    "them", "their", "theirs", "themselves"})
# The list every count:person_names prompt prints.
PERSON_NAMES = frozenset([
    "Emma", "Liam", "Sophia", "Jackson", "Olivia", "Noah", "Ava", "Lucas", "Isabella", "Mason", "Mia", "Ethan",
    "Charlotte", "Alexander", "Amelia", "Benjamin", "Harper", "Leo", "Zoe", "Daniel", "Chloe", "Samuel", "Lily",
    "Matthew", "Grace", "Owen", "Abigail", "Gabriel", "Ella", "Jacob", "Scarlett", "Nathan", "Victoria",
    "Elijah", "Layla", "Nicholas", "Audrey", "David", "Hannah", "Christopher", "Penelope", "Thomas", "Nora",
    "Andrew", "Aria", "Joseph", "Claire", "Ryan", "Stella", "Jonathan",
])
CONSONANTS = frozenset("bcdfghjklmnpqrstvwxyz")
VOWELS = frozenset("aeiou")
# A number: digits, possibly with inner "," or "." groups ("10,000" and "3.5" are one number each).
NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")


def _folded(text: str) -> list[str]:
    return [w.casefold() for w in words(text)]


def _occurrences(text: str, keyword: str) -> int:
    return sum(same_word(w, keyword) for w in words(text))


def word_count_range(text: str, low: int, high: int) -> bool:
    """"The response must contain between {min_words} and {max_words} words": low <= words <= high."""
    return low <= len(words(text)) <= high


def unique_word_count(text: str, n: int) -> bool:
    """"Use at least {N} unique words in the response": at least n distinct words (casefolded)."""
    return len(set(_folded(text))) >= n


def conjunctions(text: str, n: int) -> bool:
    """"Use at least {small_n} different coordinating conjunctions": at least n distinct words of
    for, and, nor, but, or, yet, so."""
    return len(CONJUNCTIONS.intersection(_folded(text))) >= n


def person_names(text: str, n: int) -> bool:
    """"Mention at least {N} different person names in the response, from this list: Emma, ...":
    at least n distinct names of PERSON_NAMES as whole words, capitalised as listed (a possessive
    counts: "Emma's"). IFBench's checker looks for substrings, so "Leonard" would count as Leo."""
    found = set()
    for w in words(text):
        base = w[:-2] if w[-2:] in ("'s", "\u2019s") else w
        if base in PERSON_NAMES:
            found.add(base)
    return len(found) >= n


def numbers(text: str, n: int) -> bool:
    """"Include exactly {N} numbers in the response": exactly n runs of digits, where inner "," or
    "." groups join ("10,000", "3.5", "2024-05" is two). Numbers written in words do not count."""
    return len(NUMBER_RE.findall(text)) == n


def pronouns(text: str, n: int) -> bool:
    """"The response should include at least {N} pronouns": at least n letter words (so "it's"
    gives "it") in PRONOUNS, the personal, possessive and reflexive pronouns, repeats counted."""
    return sum(w in PRONOUNS for w in letter_words(text)) >= n


def keywords_multiple(text: str, k1: str, k2: str, k3: str, k4: str, k5: str) -> bool:
    """"Include keyword {k1} once ..., {k2} twice, {k3} three times, {k4} five times, and {k5}
    seven times": exactly 1, 2, 3, 5, 7 whole-word occurrences (casefolded, possessive ok).
    IFBench's checker counts substrings, so "doors" would count as "door"; we do not."""
    return all(_occurrences(text, k) == c for k, c in zip((k1, k2, k3, k4, k5), (1, 2, 3, 5, 7)))


def consonant_clusters(text: str) -> bool:
    """"Ensure each word in your response has at least one consonant cluster (two or more
    consonants together)": every word has two adjacent letters of bcdfghjklmnpqrstvwxyz
    (y counts as a consonant, as in IFBench's checker). A word of digits has none: it fails."""
    ws = _folded(text)
    return bool(ws) and all(any(a in CONSONANTS and b in CONSONANTS for a, b in pairwise(w)) for w in ws)


def no_consecutive_first_letter(text: str) -> bool:
    """"No two consecutive words can share the same first letter" (casefolded), at least 2 words."""
    ws = _folded(text)
    return len(ws) >= 2 and all(a[0] != b[0] for a, b in pairwise(ws))


def alphabet_loop(text: str) -> bool:
    """"Each word in your response must start with the next letter of the alphabet, looping back
    to 'A' after 'Z'": every word starts with an ASCII letter, each the one after the previous
    word's (z then a); the first word may start anywhere. At least 2 words."""
    ws = _folded(text)
    if len(ws) < 2 or not all("a" <= w[0] <= "z" for w in ws):
        return False
    return all((ord(b[0]) - ord(a[0])) % 26 == 1 for a, b in pairwise(ws))


def palindromes(text: str) -> bool:
    """"Include at least 10 single-word palindromes, each at least 5 characters long": at least 10
    DIFFERENT words of letters only, 5+ letters, equal to their reverse (casefolded: "Level").
    IFBench's checker counts repeats; ten times "level" is not ten palindromes to us."""
    found = {w for w in _folded(text) if len(w) >= 5 and w.isalpha() and w == w[::-1]}
    return len(found) >= 10


def prime_lengths(text: str) -> bool:
    """"Use only words with lengths that are prime numbers": every word's count of letters and
    digits (an inner apostrophe not counted) is prime. At least one word."""
    def prime(k: int) -> bool:
        return k >= 2 and all(k % d for d in range(2, int(k ** 0.5) + 1))

    ws = words(text)
    return bool(ws) and all(prime(sum(c.isalnum() for c in w)) for w in ws)


def limited_repeats(text: str, n: int) -> bool:
    """"The response should not repeat any word more than {small_n} times": no word (casefolded)
    occurs more than n times."""
    return all(c <= n for c in Counter(_folded(text)).values())


def three_vowels(text: str) -> bool:
    """"Write a paragraph using words that contain only three types of vowels": one paragraph
    (one non-blank line) whose letters use at most 3 of a, e, i, o, u (y is not a vowel here;
    casefolded, accents not folded)."""
    paras = lines(text)
    return len(paras) == 1 and len(VOWELS.intersection(paras[0].casefold())) <= 3


def last_first(text: str) -> bool:
    """"The last word of each sentence must become the first word of the next sentence": at least
    2 sentences, and for each consecutive pair the words match (casefolded)."""
    sents = [_folded(s) for s in sentences(text)]
    return len(sents) >= 2 and all(a[-1] == b[0] for a, b in pairwise(sents))


def paragraph_last_first(text: str) -> bool:
    """"Each paragraph of your response must end with the same word it started with, separate
    paragraphs with a newline": every non-blank line with a word has the same first and last
    word (casefolded); lines without a word ("***") are separators. At least one paragraph."""
    paras = [ws for ws in (_folded(ln) for ln in lines(text)) if ws]
    return bool(paras) and all(ws[0] == ws[-1] for ws in paras)


def keyword_at_position(text: str, keyword: str, n: int, m: int) -> bool:
    """"Include keyword {keyword} in the {n}-th sentence, as the {m}-th word of that sentence":
    sentence n (from 1) exists and its word m (from 1) is the keyword (casefolded)."""
    sents = sentences(text)
    if n < 1 or len(sents) < n:
        return False
    ws = words(sents[n - 1])
    return 1 <= m <= len(ws) and ws[m - 1].casefold() == keyword.casefold()


def words_position(text: str, keyword: str) -> bool:
    """"The second word in your response and the second to last word in your response should be
    the word {keyword}": both are the keyword (casefolded); needs at least 3 words, so that they
    are two different positions."""
    ws = _folded(text)
    k = keyword.casefold()
    return len(ws) >= 3 and ws[1] == k and ws[-2] == k


def keyword_in_sentence(text: str, word: str, n: int) -> bool:
    """"The response must include keyword {word} in the {N}-th sentence": sentence n (from 1)
    exists and has the keyword as a whole word (casefolded, possessive ok). IFBench's checker
    accepts a substring ("eat" in "great"); we do not."""
    sents = sentences(text)
    return 1 <= n <= len(sents) and _occurrences(sents[n - 1], word) > 0


def incrementing_sentences(text: str, n: int) -> bool:
    """"Each sentence in your response must contain exactly {small_n} more words than the previous
    one": at least 2 sentences (one sentence would pass by default), each with exactly n words
    more than the one before."""
    counts = [len(words(s)) for s in sentences(text)]
    return len(counts) >= 2 and all(b - a == n for a, b in pairwise(counts))


def sentence_alphabet(text: str) -> bool:
    """"Tell me a 26-sentence story where each sentence's first word starts with the letters of
    the alphabet in order": exactly 26 sentences, sentence i's first word starting with letter i
    (casefolded: a, b, ..., z)."""
    sents = sentences(text)
    return len(sents) == 26 and all(words(s)[0][0].casefold() == chr(ord("a") + i) for i, s in enumerate(sents))
