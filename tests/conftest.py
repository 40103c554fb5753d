"""Shared fixtures. Keep this small: most tests build their own tiny models."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_model_dir():
    """Directory of the bundled SmolLM2-135M-Instruct as safetensors.

    Resolved through the normal cache (`$DPOKIT_CACHE`, else `~/.cache/dpokit`), so the
    ~20 s GGUF conversion happens at most once per cache, not once per test or session."""
    from dpokit.models import SMOLLM2_ALIAS, resolve_model_path

    return resolve_model_path(SMOLLM2_ALIAS)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A work directory holding a tiny causal LM in `lm/`. Module scope on purpose: the tests
    write their runs and caches under it (`out/`, `cache/`), so each module gets a fresh one and
    no module sees another's leftovers. (test_data_parallel, test_fsdp and test_sampling_bf16
    define their own `tiny_lm`, which overrides this one there.)"""
    from dpokit.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_lm")
    tiny_model().save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    return root


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny causal LM directory (`lm/`) and a reward model built on its backbone (`rm/`), for
    the online-RL tests (PPO, RLOO)."""
    from dpokit.rlhf.reward_model import build_reward_model, save_reward_model
    from dpokit.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_models")
    tiny_model().save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    rm, tok = build_reward_model(root / "lm")
    save_reward_model(rm, tok, root / "rm")
    return root


@pytest.fixture(scope="module")
def tiny_lm_pairs(tmp_path_factory):
    """`tiny_lm_pairs(n_eval)` → (root, train file, eval file): a tiny causal LM in `root/lm`,
    the first 9 pairs of examples/pairs.jsonl to train on and the next `n_eval` to evaluate.
    For the multi-process tests (DDP, FSDP): 9 train pairs at a global batch of 4 make steps of
    4, 4, 1 pairs, so in the last step rank 1 of 2 has no pair; each picks its eval split."""
    from dpokit.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_lm")
    tiny_model().save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    lines = (ROOT / "examples" / "pairs.jsonl").read_text().splitlines(keepends=True)
    train = root / "train.jsonl"
    train.write_text("".join(lines[:9]))

    def make(n_eval: int) -> tuple[Path, str, str]:
        evals = root / f"eval-{n_eval}.jsonl"
        evals.write_text("".join(lines[9:9 + n_eval]))
        return root, str(train), str(evals)

    return make
