"""Shared fixtures. Keep this small: most tests build their own tiny models."""

import pytest


@pytest.fixture(scope="session")
def real_model_dir():
    """Directory of the bundled SmolLM2-135M-Instruct as safetensors.

    Resolved through the normal cache (`$DPOKIT_CACHE`, else `~/.cache/dpokit`), so the
    ~20 s GGUF conversion happens at most once per cache, not once per test or session."""
    from dpokit.models import SMOLLM2_ALIAS, resolve_model_path

    return resolve_model_path(SMOLLM2_ALIAS)


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
