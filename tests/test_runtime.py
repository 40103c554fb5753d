"""Process-level settings: glibc malloc tuning (its speed effect is measured in benchmarks/)."""

import sys

import pytest

from dpokit import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_malloc_is_accepted_and_idempotent():
    assert runtime._libc() is not None
    assert runtime.tune_malloc() is True
    assert runtime.tune_malloc() is True


def test_tune_malloc_without_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(runtime, "_tuned", False)
    monkeypatch.setattr(runtime, "_libc", lambda: None)
    assert runtime.tune_malloc() is False


def test_tune_malloc_reports_a_refused_setting(monkeypatch):
    class Refusing:
        def mallopt(self, param, value):
            return 0

    monkeypatch.setattr(runtime, "_tuned", False)
    monkeypatch.setattr(runtime, "_libc", lambda: Refusing())
    assert runtime.tune_malloc() is False
