"""Rock-paper-scissors data (dpokit.studies.cycles_data): styles, exact cycle counts found by the
audit, and what the held-out margins say about the styles, by hand."""

import json
import math

import pytest

from dpokit.cli import main
from dpokit.data.audit import audit_pairs
from dpokit.data.normalize import load_pairs
from dpokit.studies import cycles_data as C


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_assign_styles_maximises_summed_ranks():
    scores = {"sentiment": [0.9, 0.5, 0.1], "brevity": [-1, -5, -3], "formality": [0.0, 0.5, 0.2]}
    # ranks: sentiment (2, 1, 0), brevity (2, 0, 1), formality (0, 2, 1); the best permutation is
    # A=0 (2) B=2 (1) C=1 (2) = 5; e.g. A=0 B=1 C=2 gives 2 + 0 + 1 = 3
    assert C.assign_styles(["x", "y", "z"], scores) == {"A": 0, "B": 2, "C": 1}
    plain = {"sentiment": [0.1, 0.5, 0.9], "brevity": [-5, -1, -3], "formality": [0.9, 0.0, 0.1]}
    assert C.assign_styles(["x", "y", "z"], plain) == {"A": 2, "B": 1, "C": 0}
    assert C.assign_styles(["x", " x ", "z"], plain) is None
    assert C.assign_styles(["x", "y"], plain) is None


def test_cyclic_prompts_exact_and_nested():
    sets = {rho: C.cyclic_prompts(10, rho, seed=3) for rho in (0.0, 0.25, 0.5, 1.0)}
    assert [len(sets[r]) for r in (0.0, 0.25, 0.5, 1.0)] == [0, 3, 5, 10]  # ⌊2.5 + ½⌋ = 3
    assert sets[0.25] <= sets[0.5] <= sets[1.0]
    with pytest.raises(ValueError, match="rho"):
        C.cyclic_prompts(10, 1.5, 0)


def test_triple_records_votes_and_majorities():
    texts, fin = {"A": "a", "B": "b", "C": "c"}, {"A": True, "B": False, "C": True}
    cyc = C.triple_records("p", texts, fin, cyclic=True)
    assert [(r["chosen"], r["rejected"]) for r in cyc] == [("a", "b"), ("b", "c"), ("c", "a")]
    # A vs B: rater-1 (ABC) A, rater-2 (BCA) B, rater-3 (CAB) A
    assert cyc[0]["votes"] == {"rater-1": "chosen", "rater-2": "rejected", "rater-3": "chosen"}
    assert cyc[0]["rejected_finished"] is False
    tra = C.triple_records("p", texts, fin, cyclic=False)
    assert [(r["chosen"], r["rejected"]) for r in tra] == [("a", "b"), ("b", "c"), ("a", "c")]
    for r in cyc + tra:  # every pair 2:1
        assert sorted(r["votes"].values()) == ["chosen", "chosen", "rejected"]
    assert C.population_preference(0.5) == pytest.approx({"A>B": 2 / 3, "B>C": 2 / 3, "C>A": 0.5})


def _rows(n):
    rows = []
    for i in range(n):
        rows.append({"prompt": f"prompt {i}", "texts": [f"pos {i}", f"short {i}", f"formal {i}", f"extra {i}"],
                     "finished": [True] * 4,
                     "scores": {"sentiment": [0.9, 0.1, 0.0, 0.5], "brevity": [-9, -1, -5, -2], "formality": [0.0, 0.1, 0.9, 0.0]}})
    rows.append({"prompt": "dup", "texts": ["same", "same", "other"], "finished": [True] * 3,
                 "scores": {"sentiment": [0, 0, 1], "brevity": [0, 0, 1], "formality": [0, 0, 1]}})
    return rows


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.5, 1.0])
def test_audit_finds_exactly_the_planned_cycles(tmp_path, rho):
    records, info = C.build_cycle_data(_rows(10), rho, seed=1)
    assert info["prompts"] == 10 and info["skipped"] == {"two of three samples identical": 1}
    assert info["planned_cycles"] == math.floor(rho * 10 + 0.5) and info["records"] == 30
    assert sum(r["cyclic"] for r in records) == 3 * info["planned_cycles"]
    path = tmp_path / "cycles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs, report = load_pairs(path)
    assert report.total == 0 and len(pairs) == 30
    audit = audit_pairs(pairs)
    assert audit["cycles"]["count"] == info["planned_cycles"]
    assert audit["summary"]["prompts_with_cycles"] == info["planned_cycles"]
    assert audit["contradictions"]["count"] == 0 and audit["summary"]["votes"]["raters"]["unanimous"] == 0


def test_cli_audit_reports_the_cycles(tmp_path, capsys):
    records, info = C.build_cycle_data(_rows(10), 0.5, seed=1)
    path = tmp_path / "cycles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["audit", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"cycle groups: {info['planned_cycles']}" in out and "with cycles" in out


def test_heldout_triples_and_style_margins_by_hand():
    pairs = [{"prompt": "p", "chosen": "t0", "rejected": "t1"}, {"prompt": "p", "chosen": "t0", "rejected": "t2"},
             {"prompt": "p", "chosen": "t1", "rejected": "t2"}, {"prompt": "q", "chosen": "u0", "rejected": "u1"}]
    triples, skipped = C.heldout_triples(pairs)
    assert skipped == 1 and triples[0]["texts"] == ["t0", "t1", "t2"]
    assert triples[0]["pair"] == {(0, 1): 0, (0, 2): 1, (1, 2): 2}
    roles = [{"A": 0, "B": 1, "C": 2}]
    # h01 = 2, h02 = 3, h12 = 1 → h_AB = 2, h_BC = 1, h_CA = −3 (they sum to 0)
    got = C.style_margins(triples, roles, [2.0, 3.0, 1.0, None], beta=0.5)
    assert got["triples"] == 1 and got["cycle_residual"] == 0.0
    assert got["edges"]["A>B"]["sigma_mean"] == pytest.approx(sig(1.0))
    assert got["edges"]["C>A"]["sigma_mean"] == pytest.approx(sig(-1.5)) and got["edges"]["C>A"]["positive_share"] == 0
    # centred rewards β(h_AB − h_CA)/3 = 0.833333, β(h_BC − h_AB)/3 = −0.166667, β(h_CA − h_BC)/3 = −0.666667
    assert got["reward"] == pytest.approx({"A": 5 / 6, "B": -1 / 6, "C": -2 / 3})
    assert got["order"] == ["A", "B", "C"]
    # mean |σ − ½| = (0.231059 + 0.122459 + 0.317574) / 3 = 0.223697
    assert got["confidence"] == pytest.approx(0.223697, abs=1e-6)
    # the same triple with roles permuted: B is sample 0 now, so h_AB = h10 = −2
    swapped = C.style_margins(triples, [{"A": 1, "B": 0, "C": 2}], [2.0, 3.0, 1.0, None], beta=0.5)
    assert swapped["edges"]["A>B"]["sigma_mean"] == pytest.approx(sig(-1.0))
    assert C.style_margins(triples, [None], [2.0, 3.0, 1.0, None], 0.5)["triples"] == 0
