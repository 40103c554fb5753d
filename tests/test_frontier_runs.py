"""The frontier's finished-run store: what `dpokit run frontier --resume` reuses and what it redoes."""

import json

from dpokit.tasks.frontier_runs import RUN_FILE, FinishedRuns, file_digest, key_of


def _counting(result):
    calls = []

    def compute():
        calls.append(1)
        return result

    return compute, calls


def test_a_finished_run_is_reused_only_under_the_same_key(tmp_path):
    first = FinishedRuns(tmp_path, resume=True, log=lambda *_: None)
    compute, calls = _counting({"points": [1, 2]})
    assert first.run("dpo-beta0.1", "k1", compute) == {"points": [1, 2]} and len(calls) == 1
    again = FinishedRuns(tmp_path, resume=True, log=lambda *_: None)
    assert again.run("dpo-beta0.1", "k1", compute) == {"points": [1, 2]} and len(calls) == 1
    assert again.reused == ["dpo-beta0.1"]
    changed, changed_calls = _counting({"points": [3]})
    assert again.run("dpo-beta0.1", "k2", changed) == {"points": [3]} and len(changed_calls) == 1
    # The new result replaced the old one under the new key.
    stored = json.loads((tmp_path / "dpo-beta0.1" / RUN_FILE).read_text())
    assert (stored["key"], stored["result"]) == ("k2", {"points": [3]})
    # Its wall time is kept, and a later sweep that reuses the run reports it.
    assert stored["wall_s"] == again.wall_s["dpo-beta0.1"] >= 0
    later = FinishedRuns(tmp_path, resume=True, log=lambda *_: None)
    later.run("dpo-beta0.1", "k2", changed)
    assert later.wall_s == {"dpo-beta0.1": stored["wall_s"]} and len(changed_calls) == 1


def test_without_resume_every_run_is_redone(tmp_path):
    FinishedRuns(tmp_path, resume=True, log=lambda *_: None).run("rm", "k", lambda: {"a": 1})
    fresh = FinishedRuns(tmp_path, resume=False, log=lambda *_: None)
    compute, calls = _counting({"a": 2})
    assert fresh.run("rm", "k", compute) == {"a": 2} and len(calls) == 1 and fresh.reused == []


def test_unreadable_or_incomplete_runs_are_redone(tmp_path):
    messages = []
    (tmp_path / "ppo").mkdir()
    for content in ("{not json", "[1, 2]", '{"key": "k", "result": 3}', "\xff"):
        (tmp_path / "ppo" / RUN_FILE).write_text(content, encoding="latin-1")
        compute, calls = _counting({"points": []})
        FinishedRuns(tmp_path, resume=True, log=messages.append).run("ppo", "k", compute)
        assert len(calls) == 1
        (tmp_path / "ppo" / RUN_FILE).unlink()
    assert len(messages) == 4 and all("redone" in m for m in messages)
    # A stored result whose files are gone (intact says so) is redone too.
    FinishedRuns(tmp_path, resume=True, log=messages.append).run("rm", "k", lambda: {"final_dir": str(tmp_path / "gone")})
    compute, calls = _counting({"final_dir": str(tmp_path)})
    FinishedRuns(tmp_path, resume=True, log=messages.append).run("rm", "k", compute, intact=lambda r: (tmp_path / "gone").exists())
    assert len(calls) == 1


def test_no_temporary_file_is_left_and_keys_ignore_dict_order(tmp_path):
    FinishedRuns(tmp_path, resume=False, log=lambda *_: None).put("x", "k", {"a": 1})
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [RUN_FILE]
    assert key_of({"a": 1, "b": [2]}) == key_of({"b": [2], "a": 1}) != key_of({"a": 1, "b": [3]})
    (tmp_path / "f").write_bytes(b"abc")
    d1 = file_digest(tmp_path / "f")
    (tmp_path / "f").write_bytes(b"abd")
    assert file_digest(tmp_path / "f") != d1


def test_a_run_asked_for_twice_in_one_sweep_is_computed_once(tmp_path):
    runs = FinishedRuns(tmp_path, resume=False, log=lambda *_: None)
    compute, calls = _counting({"points": [1]})
    assert runs.run("dpo-beta0.1", "k", compute) == runs.run("dpo-beta0.1", "k", compute) and len(calls) == 1
    other, other_calls = _counting({"points": [2]})
    assert runs.run("dpo-beta0.1", "k2", other) == {"points": [2]} and len(other_calls) == 1


def test_an_option_added_at_its_neutral_default_keeps_the_keys_of_finished_runs():
    import dataclasses

    from dpokit.config import TrainConfig
    from dpokit.tasks.frontier_runs import LATER_SETTINGS, key_of, settings_of

    cfg = TrainConfig(objective="rm", lr=3e-5)
    before = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LATER_SETTINGS}  # as stored before they existed
    before["lora"].pop("layers")  # lora.layers came later too (tests/test_lora_layers.py)
    assert key_of(settings_of(cfg)) == key_of(before)
    changed = dataclasses.replace(cfg, mixed_precision="bf16")  # a non-default value is part of the key
    assert key_of(settings_of(changed)) != key_of(before)
    assert all(getattr(TrainConfig(), k) == v for k, v in LATER_SETTINGS.items())  # the defaults named are the real ones
