"""The allocator settings of the command line (latentda.allocator)."""

import os
import platform
import subprocess
import sys

import pytest

from conftest import make_tiny_pipeline
from latentda import cli

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _in_subprocess(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=environment).stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_keep_freed_memory_applies_on_glibc_and_yields_to_the_users_settings():
    code = "from latentda.allocator import keep_freed_memory; print(keep_freed_memory())"
    assert _in_subprocess(code) == "True"
    assert _in_subprocess(code, MALLOC_TRIM_THRESHOLD_="1000000") == "False"


def test_the_command_line_keeps_freed_memory(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("latentda.allocator.keep_freed_memory", lambda: calls.append(True) or True)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert calls == [True]


def test_a_pipeline_keeps_freed_memory_when_built(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("latentda.pipeline.keep_freed_memory", lambda: calls.append(True) or True)
    make_tiny_pipeline(tmp_path / "pipeline")
    assert calls == [True]  # Python users sample with the same allocator setting as the command line
