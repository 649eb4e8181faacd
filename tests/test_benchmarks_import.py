"""Every benchmark and study script imports (a moved module or a renamed name fails here, not when someone runs it)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .conftest import ROOT

SCRIPTS = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "studies").glob("*.py")])


def test_the_benchmarks_are_found():
    assert {"purify_throughput.py", "sampler_throughput.py", "attack_success.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))  # the scripts import each other as the command line does
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # runs the imports and definitions; `main` runs only under __main__
    assert (module.__doc__ or "").strip(), f"{script.name} says what it measures in its docstring"
