"""What starts from Preferred-FT besides DPO, without training (the runs end to end are in
test_instructions_start.py's study): RLOO's run key, model and step-0 point under rloo.start,
Preferred-FT's weights kept when a later run needs them, the online rounds' starting model,
references and keys from Preferred-FT, and the matched-KL curves of runs that start there."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from dpokit.config import load_config
from dpokit.eval import instructions_eval as ie
from dpokit.tasks import instructions_methods as im
from dpokit.tasks import instructions_online as io
from dpokit.tasks.frontier_runs import key_of, settings_of
from dpokit.tasks.instructions_config import InstructionsConfig


# -- matched KL: a curve that starts at Preferred-FT -------------------------------------------------
def _pt(method, step, kl, rate):
    return {"method": method, "step": step, "kl": kl, "pass_rate": {"rate": rate}}


def test_matched_kl_starts_a_curve_at_its_own_step_0_not_at_the_reference():
    reference = {"pass_rate": {"rate": 0.2}}
    # Preferred-FT: reference (0, .2) → (1, .5). DPO and RLOO from it: step 0 = (1, .5)
    points = [_pt("preferred-ft", 5, 1.0, 0.5),
              _pt("dpo", 0, 1.0, 0.5), _pt("dpo", 4, 3.0, 0.7),
              _pt("rloo-rm", 0, 1.0, 0.5), _pt("rloo-rm", 2, 2.0, 0.6)]
    out = ie.matched_kl(reference, points, "rloo-rm")["values"]
    # at KL 2: dpo between (1, .5) and (3, .7) → .6; Preferred-FT's curve ends at KL 1
    assert out == {"preferred-ft": None, "dpo": pytest.approx(0.6), "rloo-rm": pytest.approx(0.6)}
    # RLOO whose KL to the study's model went DOWN to 0.5: DPO never was there (its curve starts
    # at 1); joined to the reference it would read .2 + .3·0.5 = .35, Preferred-FT's own segment
    points[-1] = _pt("rloo-rm", 2, 0.5, 0.45)
    out = ie.matched_kl(reference, points, "rloo-rm")["values"]
    assert out["dpo"] is None and out["preferred-ft"] == pytest.approx(0.35)
    assert out["rloo-rm"] == pytest.approx(0.45)
    assert ie.starts_at_reference([_pt("dpo", 2, 1.0, 0.5)]) and not ie.starts_at_reference(points[1:3])


# -- RLOO from Preferred-FT: model, key, step 0 --------------------------------------------------------
class _Runs:
    def __init__(self):
        self.keys, self.intact = {}, {}

    def run(self, name, key, compute, intact=None):
        self.keys[name], self.intact[name] = key, intact
        return {"points": [{"method": name, "step": 1, "kl": 0.3}], "stopped": None}


def _study(tmp_path, *overrides, pft_key="pft-a"):
    cfg = load_config(InstructionsConfig, None, list(overrides))
    st = im.Study(cfg, tmp_path, SimpleNamespace(), _Runs(), {"model": "fp"}, ["p1", "p2"], {})
    st.pft_key, st.pft_point = pft_key, {"method": "preferred-ft", "setting": "lr=1e-05", "step": 7, "kl": 0.2,
                                         "elapsed_s": 9.0}
    return st


def test_rloo_key_and_model_from_preferred_ft(tmp_path, monkeypatch):
    from dpokit.rlhf.rloo_config import RLOOConfig

    made = []
    monkeypatch.setattr(im, "_rloo_run", lambda st, cfg, method, setting: made.append((cfg, setting)))
    st = _study(tmp_path)
    done = im.rloo(st, "rloo-oracle")
    # the default: the study's model, and the run key as it was before rloo.start existed
    r, cfg = st.cfg.rloo, st.cfg
    old = RLOOConfig(model=cfg.model, reward="sentiment", reward_model=None, kl_coef=r.kl_coef, steps=r.steps,
                     rollout_prompts=r.rollout_prompts, k=r.k, lr=r.lr, max_new_tokens=cfg.pairs.max_new_tokens,
                     temperature=cfg.pairs.temperature, seed=cfg.seed, output_dir=str(tmp_path / "rloo-oracle"), progress=False)
    assert st.runs.keys["rloo-oracle"] == key_of(st.base, settings_of(old), None, st.train_rendered, r.points)
    assert [p["step"] for p in done["points"]] == [1]

    keys = []
    for pft_key in ("pft-a", "pft-b"):
        st = _study(tmp_path, "rloo.start=preferred-ft", pft_key=pft_key)
        done = im.rloo(st, "rloo-oracle")
        keys.append(st.runs.keys["rloo-oracle"])
    assert keys[0] != keys[1]  # Preferred-FT redone (another lr) → RLOO redone
    # step 0 is Preferred-FT's point, under RLOO's name and setting
    assert [(p["method"], p["step"], p["kl"]) for p in done["points"]] == [("rloo-oracle", 0, 0.2), ("rloo-oracle", 1, 0.3)]
    assert done["points"][0]["setting"] == "kl_coef=0.05, from Preferred-FT" and done["points"][0]["elapsed_s"] == 0.0
    # what _rloo_run would get: Preferred-FT's final model (RLOOTrainer copies it as the KL reference)
    st = _study(tmp_path, "rloo.start=preferred-ft")
    monkeypatch.setattr(st.runs, "run", lambda name, key, compute, intact=None: compute() or {"points": [], "stopped": None})
    im.rloo(st, "rloo-oracle")
    assert made[-1][0].model == str(tmp_path / "preferred-ft" / "final") and made[-1][1].endswith("from Preferred-FT")


@pytest.mark.parametrize("overrides, kept", [
    ([], False),
    (["dpo.start=preferred-ft"], True),
    (["rloo.start=preferred-ft"], True),
    (["rloo.start=preferred-ft", "rloo.reward_model=false", "rloo.oracle=false"], False),  # no RLOO run: weights not needed
])
def test_preferred_ft_weights_are_checked_when_a_run_starts_from_them(tmp_path, monkeypatch, overrides, kept):
    st = _study(tmp_path, *overrides)
    st.pairs.write_text("{}\n")
    monkeypatch.setattr(st.runs, "run", lambda name, key, compute, intact=None: st.runs.intact.update({name: intact})
                        or {"points": [{"step": 3}], "train": {}})
    im.preferred_ft(st)
    intact = st.runs.intact["preferred-ft"]
    assert (intact is not None) == kept
    if kept:  # no weights on disk → not intact → redone on --resume
        assert intact({}) is False
        (tmp_path / "preferred-ft" / "final").mkdir(parents=True)
        (tmp_path / "preferred-ft" / "final" / "config.json").write_text("{}")
        assert intact({}) is True


# -- online rounds from Preferred-FT ----------------------------------------------------------------
def _online(tmp_path, start, pft_key="pft-a", reference="both"):
    from dpokit.tasks.frontier_runs import FinishedRuns

    cfg = load_config(InstructionsConfig, None, ["online.rounds=2", f"online.reference={reference}", "model=base"])
    st = SimpleNamespace(cfg=cfg, run_dir=tmp_path, runs=FinishedRuns(tmp_path, resume=False, log=lambda *_: None),
                         base={"model": "fp"}, eval_data=None, pft_key=pft_key, evaluator=SimpleNamespace(stage=lambda *_: None))
    return io.Online(st, None, None, [SimpleNamespace(id=str(i)) for i in range(4)], {}, None, n_labels=6, start=start)


def test_round_configs_from_preferred_ft(tmp_path):
    on = _online(tmp_path, start="run/preferred-ft/final")
    x, data = tmp_path / "x", tmp_path / "x.jsonl"
    first = io.round_config(on, 1, None, None, 0, x, data)
    fixed = io.round_config(on, 2, "fixed", "run/online-r1/final", 0, x, data)
    updated = io.round_config(on, 2, "updated", "run/online-r1/final", 0, x, data)
    assert (first.model, first.ref_model) == ("run/preferred-ft/final", None)  # None = the starting model
    assert (fixed.model, fixed.ref_model) == ("run/online-r1/final", "run/preferred-ft/final")
    assert (updated.model, updated.ref_model) == ("run/online-r1/final", None)


def test_round_1_samples_preferred_ft_not_the_cached_reference(tmp_path, monkeypatch):
    import dpokit.models

    seen = []
    monkeypatch.setattr(dpokit.models, "load_model", lambda path, dtype=None: (f"model at {path}", None))

    class Stop(Exception):
        pass

    def stop(on, policy, budget, first_draw):
        seen.append((policy, budget, first_draw))
        raise Stop

    monkeypatch.setattr(io, "collect_pairs", stop)
    for start in ("run/preferred-ft/final", None):
        with pytest.raises(Stop):
            io.run_round(_online(tmp_path, start=start), "online-r1", 1, None, 3, None, 0)
    # from Preferred-FT: its samples; from the study's model: None = the reference's cached samples
    assert seen == [("model at run/preferred-ft/final", 3, 0), (None, 3, 0)]


def test_online_round_keys_carry_preferred_fts(tmp_path, monkeypatch):
    def fake_round(on, name, r, reference, budget, prev, max_steps):
        return {"labels_used": budget, "unspent": 0, "next_draw": r, "final_dir": str(tmp_path / name / "final")}

    monkeypatch.setattr(io, "run_round", fake_round)
    keys = {}
    for label, start, pft_key in (("a", "pft", "pft-a"), ("b", "pft", "pft-b"), ("ref-a", None, "pft-a"),
                                  ("ref-b", None, "pft-b")):
        on = _online(tmp_path, start=start, pft_key=pft_key)  # the same run dir: only the start and its key differ
        io.run_online(on)
        keys[label] = {name: k for (name, k) in on.st.runs.finished}
    names = {"online-r1", "online-fixed-r2", "online-updated-r2"}
    assert set(keys["a"]) == names
    assert all(keys["a"][n] != keys["b"][n] for n in names)  # another Preferred-FT: every round redone
    assert keys["ref-a"] == keys["ref-b"]  # from the study's model Preferred-FT's key plays no part


def test_online_summary_starts_at_preferred_ft_with_zero_additional_labels():
    rate = {"rate": 0.5, "ci95": [0.3, 0.7]}

    def point(kl):
        return {"kl": kl, "metrics": {"pass_rate": rate, "acceptable_rate": rate, "refusal": {"harmful": rate, "harmless": rate}}}

    cfg = load_config(InstructionsConfig, None, ["online.rounds=2"])
    res = {"labels_used": 3, "unspent": 0, "budget": 3, "by_origin": {}, "prompts_sampled": 1, "prompts_failing": 1,
           "passes": [0], "steps": 1, "failure_by_group": {}, "pairs_over_budget": 0, "no_pair_reasons": {}, "ref_model": None}
    out = io.online_summary(cfg, 6, 4, {"fixed": [{**res, "round": 1, "point": point(0.4)}, {**res, "round": 2, "point": point(0.5)}]},
                            point(0.3), {**point(0.6), "step": 2}, start="preferred-ft")
    curve = out["chains"]["fixed"]
    assert out["start"] == "preferred-ft" and [(c["labels"], c["kl"]) for c in curve] == [(0, 0.3), (3, 0.4), (6, 0.5)]
    assert (out["offline"]["labels"], out["offline"]["kl"]) == (6, 0.6)


def test_report_says_the_online_arms_start_from_preferred_ft():
    from dpokit.tasks.instructions_report import _online_md

    rate = {"rate": 0.5, "ci95": [0.3, 0.7]}
    online = {"rounds": 2, "round_budgets": [3, 3], "labels_budget": 6, "prompts_per_draw": 4, "start": "preferred-ft",
              "offline": {"pass_rate": rate, "kl": 0.6}, "chains": {}, "final": {}}
    assert "Both arms start from Preferred-FT" in "\n".join(_online_md(online))
    assert "Preferred-FT" not in "\n".join(_online_md({**online, "start": "reference"}))


def test_paths_are_the_studys(tmp_path):
    st = _study(tmp_path, "dpo.start=preferred-ft")
    assert im.pft_final(st) == Path(tmp_path) / "preferred-ft" / "final" and im.from_pft(st) and not im.from_pft(st, "rloo")


# -- Preferred-FT on some prompt kinds only ----------------------------------------------------------
def _records():
    import json
    rows = [{"prompt": "c", "chosen": "a", "rejected": "b", "kind": "constraint"},
            {"prompt": "h", "chosen": "I can't help with that.", "rejected": "sure", "kind": "harmful"},
            {"prompt": "q", "chosen": "yes", "rejected": "I can't help with that.", "kind": "harmless"},
            {"prompt": "f", "chosen": "x", "rejected": "y"}]  # from a pair file: no kind
    return rows, "".join(json.dumps(r) + "\n" for r in rows)


def test_preferred_ft_trains_on_the_kinds_it_names_and_on_kindless_file_pairs(tmp_path, monkeypatch):
    import json
    rows, text = _records()
    st = _study(tmp_path, "preferred_ft.kinds=[constraint, harmless]")
    st.pairs.write_text(text)
    seen = {}
    monkeypatch.setattr(st.runs, "run", lambda name, key, compute, intact=None: seen.update(key=key, data=compute.args[0].data)
                        or {"points": [{"step": 3}], "train": {}})
    im.preferred_ft(st)
    trained = [json.loads(line) for line in Path(seen["data"]).read_text().splitlines()]
    assert seen["data"] == str(tmp_path / "preferred_ft_pairs.jsonl")
    assert [r["prompt"] for r in trained] == ["c", "q", "f"]  # the refusal-chosen harmful pair is left out
    # every kind (the default): pairs.jsonl itself, so the run keeps the key it always had
    st_all = _study(tmp_path)
    assert im.preferred_ft_data(st_all) == st_all.pairs
    keys = {}
    monkeypatch.setattr(st_all.runs, "run", lambda name, key, compute, intact=None: keys.update(all=key)
                        or {"points": [{"step": 3}], "train": {}})
    im.preferred_ft(st_all)
    assert keys["all"] != seen["key"]


def test_preferred_ft_kinds_that_select_nothing_is_a_config_error(tmp_path):
    from dpokit.config import ConfigError
    st = _study(tmp_path, "preferred_ft.kinds=[harmful]")
    st.pairs.write_text("".join(line + "\n" for line in _records()[1].replace('"kind": "harmful"', '"kind": "harmless"')
                                .splitlines() if '"kind"' in line))  # the kindless file pair would be kept
    with pytest.raises(ConfigError, match="no pair .* has a prompt of these kinds"):
        im.preferred_ft_data(st)


@pytest.mark.parametrize("value", ["[]", "[constraint, harmfull]"])
def test_preferred_ft_kinds_are_checked(value):
    from dpokit.config import ConfigError
    with pytest.raises(ConfigError, match="preferred_ft.kinds"):
        load_config(InstructionsConfig, None, [f"preferred_ft.kinds={value}"])
