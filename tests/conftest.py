"""Shared fixtures. Keep this small: most tests build their own tiny models."""

import pytest


@pytest.fixture(scope="session")
def real_model_dir():
    """Directory of the bundled SmolLM2-135M-Instruct as safetensors.

    Resolved through the normal cache (`$DPOKIT_CACHE`, else `~/.cache/dpokit`), so the
    ~20 s GGUF conversion happens at most once per cache, not once per test or session."""
    from dpokit.models import SMOLLM2_ALIAS, resolve_model_path

    return resolve_model_path(SMOLLM2_ALIAS)
