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


class Recording:
    """A libc stand-in that accepts every mallopt and records the calls."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param.value, value.value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad.value))
        return 1


def test_configure_malloc_picks_tuned_or_lean_and_switches_back(monkeypatch):
    libc = Recording()
    monkeypatch.setattr(runtime, "_tuned", False)
    monkeypatch.setattr(runtime, "_libc", lambda: libc)
    tuned = [("mallopt", -3, 32 << 20), ("mallopt", -1, 2**31 - 1), ("mallopt", -2, 256 << 20)]
    lean = [("mallopt", -3, 256 * 1024), ("mallopt", -1, 1024 * 1024), ("mallopt", -2, 128 * 1024), ("malloc_trim", 0)]
    # One process, three runs (as in a test session): tuned, lean, tuned again.
    for tune, expected in ((True, tuned), (False, lean), (True, tuned)):
        libc.calls.clear()
        assert runtime.configure_malloc(tune) is True
        assert libc.calls == expected, tune  # the second tuned run is applied, not skipped as done


def test_lean_malloc_without_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(runtime, "_libc", lambda: None)
    assert runtime.lean_malloc() is False


# Blocks freed between long-lived small ones: glibc's dynamic mmap threshold (raised by the
# first freed 8 MiB block) puts the 2 MiB blocks on the heap, where the small ones pin the holes.
_PINNED_HOLES = """
import ctypes, sys
from pathlib import Path
from dpokit import runtime
if sys.argv[1] == "lean":
    assert runtime.lean_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024
first = libc.malloc(8 << 20); ctypes.memset(first, 1, 8 << 20); libc.free(first)
big, small = [], []
for _ in range(32):
    big.append(libc.malloc(2 << 20)); ctypes.memset(big[-1], 1, 2 << 20)
    small.append(libc.malloc(64 << 10)); ctypes.memset(small[-1], 1, 64 << 10)
before = rss()
for p in big:
    libc.free(p)
print((before - rss()) / (64 << 20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_lean_malloc_returns_freed_blocks_that_default_malloc_keeps():
    import subprocess

    def returned(mode: str) -> float:  # fraction of the 64 MiB freed that left the process
        out = subprocess.run([sys.executable, "-c", _PINNED_HOLES, mode], capture_output=True, text=True, check=True)
        return float(out.stdout)

    assert returned("default") < 0.1  # the case lean_malloc is for: glibc keeps the holes
    assert returned("lean") > 0.9
