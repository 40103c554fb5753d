"""`policy_eval.completion_logps(..., temperature=T)`: the log-probs of the tempered distribution
softmax(logits / T) that samples at T are drawn from, checked against the full-logits computation
on a tiny random model (with and without an output bias), and the study's KL at its temperature."""

import pytest
import torch

from dpokit.eval.policy_eval import SampleSet, completion_logps
from dpokit.generate import Completion
from dpokit.testing import tiny_model, tiny_tokenizer


def _by_hand(model, tok, prompt: str, ids: list[int], temperature: float) -> float:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + ids])).logits[0].double()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return float(sum(logp[len(p) - 1 + t, tok_id] for t, tok_id in enumerate(ids)))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("bias", [False, True])
def test_tempered_completion_logps_match_log_softmax_of_scaled_logits(temperature, bias):
    model, tok = tiny_model(), tiny_tokenizer()
    if bias:  # a head with a bias: logits / T needs the bias scaled too
        head = model.get_output_embeddings()
        new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        with torch.no_grad():
            new.weight.copy_(head.weight)
            new.bias.copy_(torch.randn(head.out_features))
        model.set_output_embeddings(new)
    rows = {"hello there": [[72, 105, 33], [258]], "a much longer prompt to pad": [[65, 66], [67, 68, 69, 70]]}
    samples = SampleSet(list(rows), [[Completion("", ids, ids[-1] == 258) for ids in r] for r in rows.values()], [[0.0, 0.0]] * 2)
    got = completion_logps(model, tok, samples, batch_size=3, temperature=temperature)
    want = [_by_hand(model, tok, p, ids, temperature) for p, r in rows.items() for ids in r]
    assert got == pytest.approx(want, abs=1e-4)
    if temperature != 1.0:  # and it is not the untempered value
        assert got != pytest.approx(completion_logps(model, tok, samples, batch_size=3), abs=1e-3)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        completion_logps(tiny_model(), tiny_tokenizer(), SampleSet([], [], []), temperature=0.0)


def test_the_studys_kl_uses_the_evaluation_temperature(monkeypatch):
    from dpokit.config import load_config
    from dpokit.eval import policy_eval as pe
    from dpokit.tasks import instructions as inst
    from dpokit.tasks.instructions_config import InstructionsConfig

    seen = []
    monkeypatch.setattr(pe, "completion_logps", lambda model, tok, samples, temperature=1.0: seen.append(temperature) or [0.0])
    samples = SampleSet(["p"], [[Completion("x", [1], True)]], [[0.0]])
    for overrides, expected in (([], 1.0), (["eval.temperature=0.7"], 0.7), (["pairs.temperature=0.8"], 0.8)):
        cfg = load_config(InstructionsConfig, None, overrides)
        ev = inst.Evaluator(cfg, "ref", "tok", [], [], [], [], print)
        seen.clear()
        ev.kl("policy", samples)
        assert seen == [expected, expected] and ev.settings()["temperature"] == expected
