"""The preference-data audit (`dpokit.data.audit`, `dpokit audit`): exact counts and
file:line sources on a hand-written file, the cycle rules (2-cycles are contradictions, a
diamond is no cycle), Tarjan against brute force, the JSON schema and the CLI exit codes."""

import json
import random

import pytest

from dpokit.cli import main
from dpokit.data.audit import audit_file, audit_pairs
from dpokit.data.preference_graph import find_cycle, strongly_connected_components
from dpokit.data.records import PreferencePair


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


PETS = user("Rank pets")
# Line numbers (from 1) are what the tests assert on; keep the order.
RECORDS = [
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},  # 1  duplicate (×3 with 2, 9)
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},  # 2
    {"prompt": "Pick a colour", "chosen": "red", "rejected": "blue"},  # 3  contradiction: red ≻ blue
    {"prompt": "Pick a colour", "chosen": "blue", "rejected": "red"},  # 4  blue ≻ red
    {"prompt": "Pick a colour", "chosen": "red", "rejected": "blue"},  # 5  red ≻ blue again (and a duplicate of 3)
    {"prompt": "Rank fruit", "chosen": "apple", "rejected": "pear"},  # 6  3-cycle
    {"prompt": "Rank fruit", "chosen": "pear", "rejected": "plum"},  # 7
    {"prompt": "Rank fruit", "chosen": "plum", "rejected": "apple"},  # 8
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},  # 9
    # 10-14: chat, one 4-node SCC with two cycles: cat≻dog≻fish≻cat and cat≻dog≻fish≻bird≻cat.
    # The same prompt written three ways: string answers, keys in another order, implicit prompt.
    {"prompt": PETS, "chosen": "cat", "rejected": "dog"},  # 10
    {"prompt": [{"content": "Rank pets", "role": "user"}], "chosen": assistant("dog"), "rejected": assistant("fish")},  # 11
    {"chosen": PETS + assistant("fish"), "rejected": PETS + assistant("cat")},  # 12
    {"prompt": PETS, "chosen": "fish", "rejected": "bird"},  # 13
    {"prompt": PETS, "chosen": "bird", "rejected": "cat"},  # 14
    # 15-18: a diamond A≻B, A≻C, B≻D, C≻D: no cycle. Votes: one clear, one tie, one against.
    {"prompt": "Diamond", "chosen": "A", "rejected": "B", "votes": [3, 1]},  # 15
    {"prompt": "Diamond", "chosen": "A", "rejected": "C", "votes": [2, 2]},  # 16
    {"prompt": "Diamond", "chosen": "B", "rejected": "D", "votes": [1, 3]},  # 17
    {"prompt": "Diamond", "chosen": "C", "rejected": "D"},  # 18
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon, I think"},  # 19 clean
    # 20: another prompt (system message): with line 10 it would be a contradiction.
    {"prompt": [{"role": "system", "content": "Be brief."}] + PETS, "chosen": "dog", "rejected": "cat"},  # 20
    {"prompt": "x", "chosen": "same", "rejected": "same"},  # 21 skipped by the loader
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def data(tmp_path):
    return write_jsonl(tmp_path / "audit.jsonl", RECORDS)


def src(*lines):
    return [f"audit.jsonl:{n}" for n in lines]


def text_pairs(prompt, edges):
    """One text pair a ≻ b under `prompt` for each (a, b), with sources t:1, t:2, ..."""
    return [PreferencePair(prompt=prompt, chosen=a, rejected=b, source=f"t:{i}") for i, (a, b) in enumerate(edges, 1)]


def assert_valid_cycle(example, pairs_by_source):
    """The steps form a closed loop of distinct responses, each step said by its source."""
    steps = example["cycle"]
    assert len(steps) >= 3
    for step, nxt in zip(steps, steps[1:] + steps[:1]):
        assert step["rejected"] == nxt["chosen"]
        pair = pairs_by_source[step["source"]]
        assert (pair["chosen"], pair["rejected"]) == (step["chosen"], step["rejected"])
    assert len({s["chosen"] for s in steps}) == len(steps)


# ---------------------------------------------------------------- the hand-written file


def _plain(record):
    """(chosen, rejected) of a test record as the audit previews them (last message)."""
    def last(x):
        return x if isinstance(x, str) else x[-1]["content"]
    return {"chosen": last(record["chosen"]), "rejected": last(record["rejected"])}


def test_summary_counts(data):
    s = audit_file(data)["summary"]
    assert s["records"] == 20 and s["skipped"] == 1
    assert s["prompts"] == 7  # 2+2, colour, fruit, pets, diamond, capital, pets with a system message
    assert s["pairs_per_prompt"] == {"min": 1, "median": 3.0, "max": 5}  # sizes 3,3,3,5,4,1,1
    assert s["distinct_responses"] == 2 + 2 + 3 + 4 + 4 + 2 + 2
    assert (s["prompts_with_duplicates"], s["prompts_with_contradictions"], s["prompts_with_cycles"]) == (2, 1, 2)
    assert s["prompts_flagged"] == 3 and s["flagged_share"] == pytest.approx(3 / 7)
    assert s["votes"] == {"records_with_votes": 3, "ties": 1, "against_label": 1}


def test_length_bias_by_hand(data):
    ln = audit_file(data)["summary"]["length_chars"]
    # (chosen, rejected) characters per kept record, lines 1-20.
    lengths = [(1, 1), (1, 1), (3, 4), (4, 3), (3, 4), (5, 4), (4, 4), (4, 5), (1, 1), (3, 3),
               (3, 4), (4, 3), (4, 4), (4, 3), (1, 1), (1, 1), (1, 1), (1, 1), (5, 13), (3, 3)]
    assert sum(c for c, _ in lengths) == 56 and sum(r for _, r in lengths) == 64
    assert ln["chosen_mean"] == pytest.approx(2.8) and ln["rejected_mean"] == pytest.approx(3.2)
    assert (ln["chosen_longer"], ln["rejected_longer"], ln["same_length"]) == (4, 5, 11)  # lines 4, 6, 12, 14
    assert ln["chosen_longer_share"] == pytest.approx(0.2)


def test_length_of_chat_completions_counts_all_message_contents():
    pair = PreferencePair(prompt=user("q"), chosen=assistant("abc") + user("de") + assistant("f"), rejected=assistant("xy"), source="c:1")
    ln = audit_pairs([pair])["summary"]["length_chars"]
    assert (ln["chosen_mean"], ln["rejected_mean"], ln["chosen_longer"]) == (6.0, 2.0, 1)


def test_duplicates(data):
    dup = audit_file(data)["duplicates"]
    assert dup["count"] == 2 and dup["redundant_records"] == 3
    first, second = dup["examples"]
    assert (first["prompt"], first["chosen"], first["rejected"]) == ("2+2=", "4", "5")
    assert first["records"] == 3 and first["sources"] == src(1, 2, 9)
    assert second["records"] == 2 and second["sources"] == src(3, 5)


def test_contradiction_counts_each_way(data):
    con = audit_file(data)["contradictions"]
    assert con["count"] == 1  # the pets prompt with a system message (line 20) is another prompt
    (ex,) = con["examples"]
    assert (ex["prompt"], ex["a"], ex["b"]) == ("Pick a colour", "red", "blue")
    assert ex["a_over_b"] == {"records": 2, "sources": src(3, 5)}
    assert ex["b_over_a"] == {"records": 1, "sources": src(4)}


def test_cycle_groups(data):
    cycles = audit_file(data)["cycles"]
    assert cycles["count"] == 2  # the 2-cycle red ↔ blue is not a cycle group
    fruit, pets = cycles["examples"]
    assert all(ex["prompt"] != "Pick a colour" for ex in cycles["examples"])
    assert (fruit["prompt"], fruit["responses"], fruit["records"], fruit["sources"]) == ("Rank fruit", 3, 3, src(6, 7, 8))
    assert [s["source"] for s in fruit["cycle"]] == src(6, 7, 8)
    # Chat records written three ways group as one prompt, one 4-node component.
    assert (pets["prompt"], pets["responses"], pets["records"], pets["sources"]) == ("Rank pets", 4, 5, src(10, 11, 12, 13, 14))
    # The example closes the first one-way edge (cat ≻ dog) by the shortest way back.
    assert [(s["chosen"], s["rejected"], s["source"]) for s in pets["cycle"]] == [
        ("cat", "dog", "audit.jsonl:10"), ("dog", "fish", "audit.jsonl:11"), ("fish", "cat", "audit.jsonl:12")]
    by_source = {f"audit.jsonl:{i}": _plain(r) for i, r in enumerate(RECORDS, 1)}
    for ex in cycles["examples"]:
        assert_valid_cycle(ex, by_source)


def test_max_examples_limits_examples_not_counts(data):
    report = audit_file(data, max_examples=1)
    assert report["cycles"]["count"] == 2 and len(report["cycles"]["examples"]) == 1
    dup = report["duplicates"]["examples"][0]
    assert dup["records"] == 3 and dup["sources"] == src(1)
    assert audit_file(data, max_examples=0)["contradictions"] == {"count": 1, "examples": []}
    with pytest.raises(ValueError, match="max_examples"):
        audit_file(data, max_examples=-1)


# ---------------------------------------------------------------- cycle rules


def test_diamond_is_not_a_cycle():
    report = audit_pairs(text_pairs("d", [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")]))
    assert report["cycles"]["count"] == 0 and report["contradictions"]["count"] == 0
    assert report["summary"]["prompts_flagged"] == 0


def test_chain_of_contradictions_is_not_a_cycle_group():
    # A ↔ B ↔ C is one 3-node component, but its only cycles are the two 2-cycles.
    report = audit_pairs(text_pairs("c", [("A", "B"), ("B", "A"), ("B", "C"), ("C", "B")]))
    assert report["contradictions"]["count"] == 2 and report["cycles"]["count"] == 0


def test_triangle_of_contradictions_holds_a_3_cycle():
    edges = [("A", "B"), ("B", "A"), ("B", "C"), ("C", "B"), ("C", "A"), ("A", "C")]
    report = audit_pairs(text_pairs("t", edges))
    assert report["contradictions"]["count"] == 3 and report["cycles"]["count"] == 1
    by_source = {p.source: {"chosen": p.chosen, "rejected": p.rejected} for p in text_pairs("t", edges)}
    assert_valid_cycle(report["cycles"]["examples"][0], by_source)


def test_one_way_cycle_through_a_contradicted_edge():
    # B ≻ C ≻ A ≻ B closes only through the contradicted edge A ≻ B.
    report = audit_pairs(text_pairs("p", [("A", "B"), ("B", "A"), ("B", "C"), ("C", "A")]))
    assert report["contradictions"]["count"] == 1 and report["cycles"]["count"] == 1
    assert [s["chosen"] for s in report["cycles"]["examples"][0]["cycle"]] == ["B", "C", "A"]


def test_long_cycle_needs_no_recursion():
    n = 3000  # far past Python's default recursion limit of 1000
    pairs = text_pairs("long", [(f"r{i}", f"r{(i + 1) % n}") for i in range(n)])
    cycles = audit_pairs(pairs, max_examples=1)["cycles"]
    assert cycles["count"] == 1
    assert cycles["examples"][0]["responses"] == n and len(cycles["examples"][0]["cycle"]) == n


def _reachable(n, succ, banned=None):
    """reach[s] = nodes reachable from s, never using the edge `banned`."""
    reach = []
    for s in range(n):
        seen, todo = {s}, [s]
        while todo:
            x = todo.pop()
            for w in succ[x]:
                if w not in seen and (x, w) != banned:
                    seen.add(w)
                    todo.append(w)
        reach.append(seen)
    return reach


def _has_long_cycle(n, succ, edges, comp):
    """Brute force: a simple cycle of >= 3 nodes runs u -> v, then back from v to u by a
    path of >= 2 steps, i.e. one that does not use the direct edge v -> u."""
    for u, v in edges:
        if u in comp and v in comp and u in _reachable(n, succ, banned=(v, u))[v]:
            return True
    return False


@pytest.mark.parametrize("seed", range(30))
def test_tarjan_and_find_cycle_match_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 10)
    edges = {(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(0, 3 * n))}
    edges = sorted((u, v) for u, v in edges if u != v)
    succ = {u: [v for a, v in edges if a == u] for u in range(n)}
    reach = _reachable(n, succ)
    expected = {frozenset(v for v in range(n) if v in reach[u] and u in reach[v]) for u in range(n)}
    comps = strongly_connected_components(range(n), succ)
    assert {frozenset(c) for c in comps} == expected and sum(map(len, comps)) == n
    for comp in comps:
        cycle = find_cycle(comp, edges, succ)
        assert (cycle is not None) == _has_long_cycle(n, succ, edges, set(comp))
        if cycle is not None:
            assert cycle[0] == cycle[-1] and len(set(cycle)) == len(cycle) - 1 >= 3
            assert set(cycle) <= set(comp) and all(step in edges for step in zip(cycle, cycle[1:]))


# ---------------------------------------------------------------- JSON and the command line


SCHEMA = {
    "path": None, "max_examples": None, "skipped": None,
    "summary": {
        "records", "skipped", "prompts", "pairs_per_prompt", "distinct_responses", "prompts_with_duplicates",
        "prompts_with_contradictions", "prompts_with_cycles", "prompts_flagged", "flagged_share", "length_chars", "votes",
    },
    "duplicates": {"count", "redundant_records", "examples"},
    "contradictions": {"count", "examples"},
    "cycles": {"count", "examples"},
}


def test_cli_prints_report_and_writes_json(data, tmp_path, capsys):
    out = tmp_path / "out" / "audit.json"
    assert main(["audit", str(data), "--json", str(out), "--max-examples", "2"]) == 0
    text = capsys.readouterr().out
    assert "contradictions: 1" in text and "cycle groups: 2" in text and "duplicate pairs: 2 (3 redundant records)" in text
    assert '"red" ≻ "blue" in 2 (audit.jsonl:3, audit.jsonl:5); "blue" ≻ "red" in 1 (audit.jsonl:4)' in text
    assert '"2+2=": "4" ≻ "5" ×3 (audit.jsonl:1, audit.jsonl:2, …)' in text
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(audit_file(data, max_examples=2)))  # the same audit as the text
    assert set(report) == set(SCHEMA)
    for key, fields in SCHEMA.items():
        if fields:
            assert set(report[key]) == fields, key
    assert set(report["summary"]["length_chars"]) == {
        "chosen_mean", "rejected_mean", "chosen_longer", "rejected_longer", "same_length", "chosen_longer_share"}
    assert set(report["cycles"]["examples"][0]) == {"prompt", "responses", "records", "sources", "cycle"}
    assert set(report["cycles"]["examples"][0]["cycle"][0]) == {"chosen", "rejected", "source"}
    assert set(report["contradictions"]["examples"][0]) == {"prompt", "a", "b", "a_over_b", "b_over_a"}
    assert set(report["duplicates"]["examples"][0]) == {"prompt", "chosen", "rejected", "records", "sources"}
    assert report["skipped"]["skipped"] == {"identical chosen and rejected": {"count": 1, "examples": src(21)}}


README_EXAMPLE = """\
pairs.jsonl: 9 records (0 skipped), 3 prompts, 7 distinct responses; pairs per prompt min 3, median 3, max 3
  flagged prompts: 2 of 3 (66.7%): 1 with contradictions, 1 with cycles
  length (chars): chosen mean 2.9, rejected mean 3.0; chosen longer in 2 of 9 (22.2%)
duplicate pairs: 2 (3 redundant records)
  "2+2=": "4" ≻ "5" ×3 (pairs.jsonl:1, pairs.jsonl:2, pairs.jsonl:9)
  "Pick a colour": "red" ≻ "blue" ×2 (pairs.jsonl:3, pairs.jsonl:5)
contradictions: 1
  "Pick a colour": "red" ≻ "blue" in 2 (pairs.jsonl:3, pairs.jsonl:5); "blue" ≻ "red" in 1 (pairs.jsonl:4)
cycle groups: 1
  "Rank fruit": 3 responses, 3 records; e.g. "apple" ≻ "pear" ≻ "plum" ≻ "apple" (pairs.jsonl:6, pairs.jsonl:7, pairs.jsonl:8)
"""


def test_text_report_is_the_readme_example(tmp_path, monkeypatch, capsys):
    # Lines 1-9 of RECORDS; README.md ("Data audit") shows this very output.
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "pairs.jsonl", RECORDS[:9])
    assert main(["audit", "pairs.jsonl"]) == 0
    assert capsys.readouterr().out == README_EXAMPLE


def test_cli_clean_file(tmp_path, capsys):
    clean = write_jsonl(tmp_path / "clean.jsonl", [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}])
    assert main(["audit", str(clean)]) == 0
    text = capsys.readouterr().out
    assert "duplicate pairs: 0" in text and "contradictions: 0" in text and "cycle groups: 0" in text


def test_cli_malformed_file_exits_2_with_file_line_field(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], {"prompt": "x", "chosen": 3, "rejected": "y"}])
    assert main(["audit", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "bad.jsonl:2: field 'chosen': expected a string or a list of messages, got int" in captured.err
    assert captured.out == ""
    assert main(["audit", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_cli_rejects_negative_max_examples(data):
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(data), "--max-examples", "-1"])
    assert exc.value.code == 2


def test_named_raters_per_rater_agreement():
    from dpokit.data.audit import rater_stats
    from dpokit.data.normalize import normalize_record

    rows = [  # alice always with the label; bob twice against; carol on two records only
        {"votes": {"alice": "chosen", "bob": "rejected", "carol": "chosen"}},  # majority chosen
        {"votes": {"alice": "chosen", "bob": "rejected"}},  # tie: no majority
        {"votes": {"alice": "chosen", "bob": "chosen", "carol": "chosen"}},  # unanimous
    ]
    pairs = [normalize_record({"prompt": f"p{i}", "chosen": "a", "rejected": "b", **r}, f"f:{i}") for i, r in enumerate(rows)]
    stats = rater_stats(pairs)
    assert stats["records"] == 3 and stats["unanimous"] == 1
    assert stats["by_rater"] == {
        "alice": {"records": 3, "with_label": 3, "with_majority": 2, "decided": 2},
        "bob": {"records": 3, "with_label": 1, "with_majority": 1, "decided": 2},
        "carol": {"records": 2, "with_label": 2, "with_majority": 2, "decided": 2},
    }
