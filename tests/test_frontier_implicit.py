"""The implicit-reward study's pure parts: the seeded pair pool, the per-token log-ratio and the
rank correlation it reports (numbers by hand), and its config checks."""

import json

import pytest

from dpokit.config import ConfigError
from dpokit.tasks.frontier_implicit import implicit_md, implicit_spearman, per_token, subset_pairs


def _write(path, n):
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n" + ("\n" if i == 2 else "")
                            for i in range(n)))
    return path


def test_subset_is_seeded_in_file_order_and_whole_when_large(tmp_path):
    src = _write(tmp_path / "pairs.jsonl", 10)  # one blank line after record 2: not a record
    a = subset_pairs(src, 4, 0, tmp_path / "a" / "pairs.jsonl").read_text().splitlines()
    b = subset_pairs(src, 4, 0, tmp_path / "b.jsonl").read_text().splitlines()
    c = subset_pairs(src, 4, 1, tmp_path / "c.jsonl").read_text().splitlines()
    ids = [int(json.loads(line)["prompt"][1:]) for line in a]
    assert a == b and len(a) == 4 and len(set(ids)) == 4 and ids == sorted(ids)
    assert a != c  # another seed, another pool (for these 10 records and seeds 0, 1)
    whole = subset_pairs(src, 99, 0, tmp_path / "w.jsonl").read_text().splitlines()
    assert [json.loads(line)["prompt"] for line in whole] == [f"p{i}" for i in range(10)]
    assert not list(tmp_path.glob("**/*.tmp"))


def test_per_token_and_spearman_by_hand():
    assert per_token([6.0, -2.0, 3.0], [3, 4, 0]) == [2.0, -0.5, 3.0]  # an empty completion counts as 1 token
    # log-ratios 6-0=6, 1-3=-2, 2-1=1, 4-0=4; lengths 6, 1, 1, 2 → per token 1, -2, 1, 2.
    # truth 0.9, 0.1, 0.2, 0.5: summed ranks (4, 1, 2, 3) match the truth's (4, 1, 2, 3): ρ = 1.
    # per-token ranks (2.5, 1, 2.5, 4) vs (4, 1, 2, 3), Pearson of the ranks: both means 2.5;
    # Σ dx·dy = 0·1.5 + (-1.5)(-1.5) + 0·(-0.5) + 1.5·0.5 = 3; Σ dx² = 4.5, Σ dy² = 5 → ρ = 3/√22.5.
    rho = implicit_spearman([6, 1, 2, 4], [0, 3, 1, 0], [6, 1, 1, 2], [0.9, 0.1, 0.2, 0.5])
    assert rho["spearman"] == pytest.approx(1.0)
    assert rho["spearman_per_token"] == pytest.approx(3 / 22.5 ** 0.5)


def test_report_section_lists_every_checkpoint():
    rows = [{"beta": 0.1, "pairs": 270, "step": s, "pairs_seen": 8 * s, "epochs": 8 * s / 270, "spearman": 0.1 * s,
             "spearman_per_token": None} for s in (1, 2)]
    md = implicit_md(rows, 0.55)
    assert "+0.55" in md and md.count("| 0.1 | 270 |") == 2 and "n/a" in md
    assert implicit_md(None, 0.5) == ""


@pytest.mark.parametrize("override, needle", [("implicit.pools=[0]", "implicit.pools"),
                                              ("implicit.betas=[0.0]", "implicit.betas"),
                                              ("implicit.betas=[.nan]", "implicit.betas")])
def test_config_rejects_bad_study_settings(override, needle):
    from dpokit.config import load_config, recipe
    from dpokit.tasks.frontier_config import FrontierConfig

    with pytest.raises(ConfigError, match=needle):
        load_config(FrontierConfig, recipe("frontier_quick"), [override])
