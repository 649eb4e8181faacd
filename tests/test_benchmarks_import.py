"""Every benchmark and study script imports (a moved module or a renamed name fails here, not when someone runs it)."""

from __future__ import annotations

import importlib.util
import json
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


def study(name: str, monkeypatch):
    """``studies/<name>.py`` as a module (its ``main`` not run), importing the package and the other studies."""
    monkeypatch.syspath_prepend(str(ROOT))
    spec = importlib.util.spec_from_file_location(f"study_{name}", ROOT / "studies" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stopping_rule_study_labels_each_attacker_apart(monkeypatch):
    """White-box and grey-box sets, and sets made for another T, land in separate rows of the study's table."""
    module = study("stopping_rule", monkeypatch)

    def made(awareness=None, ebm="out/ebm/clean_holdout_500steps/runs/x/checkpoints/last.ckpt", chain_steps=150, eot=1):
        aware = {"awareness": awareness, "ebm": ebm, "chain_steps": chain_steps, "eot": eot} if awareness else None
        return {"attack": "adaptive_badnets" if awareness else "badnets", "defense_awareness": aware}

    assert module.label(made()) == "badnets"
    assert module.label(made("exact")) == "adaptive_badnets (exact)"
    assert module.label(made("exact", chain_steps=300)) == "adaptive_badnets (exact, T = 300)"
    assert module.label(made("exact", ebm="out/ebm/poisoned_blended_c0/last.ckpt")) == "adaptive_badnets (exact, grey-box)"
    assert module.label(made("energy", chain_steps=300)) == "adaptive_badnets (energy)"
    assert module.label(made("exact", eot=2)) == "adaptive_badnets (exact, EOT 2)"


def test_the_stopping_rule_study_takes_an_evaluations_overlays(monkeypatch):
    module = study("stopping_rule", monkeypatch)
    a, b = "configs/evaluate/cifar10_cpu.yaml", "configs/evaluate/cifar10_cpu_defense_aware.yaml"
    assert module.arguments(["--out", "x", "--config", a, "--config", b]).config == [a, b]  # repeated, as for `pureebm evaluate`
    assert module.arguments(["--out", "x", "--config", a, b]).config == [a, b]
    assert module.arguments(["--out", "x"]).config == [str(ROOT / "configs/evaluate/digits.yaml")]


def test_the_studies_count_one_victim_per_set_defense_and_seed(tmp_path, monkeypatch):
    """A set purified again (another run into the folder) leaves two victims of one cell in victims.jsonl: the studies
    keep the one the latest evaluation reported, else the last written, and never average both."""
    module = study("security_table", monkeypatch)

    def row(folder, defense, defended, seed, success):
        return {"key": f"{folder}|{defense}|{defended}|seed{seed}|epochs30", "victim_seed": seed, "success_x1": success}

    rows = [row("badnets_c0-a", "none", "badnets_c0-a", 100, 1.0), row("badnets_c0-a", "T150", "T150-old", 100, 0.04),
            row("badnets_c3-b", "T150", "T150-x", 101, 0.09), row("badnets_c0-a", "T150", "T150-new", 100, 0.06),
            row("adaptive_badnets_c0-c", "T150", "T150-p", 100, 0.9), row("adaptive_badnets_c0-c", "T150", "T150-q", 100, 0.8)]
    (tmp_path / "victims.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "results.csv").write_text("key,success_x1\n" + "".join(f"{r['key']},{r['success_x1']}\n" for r in rows[:3]))
    assert [r["success_x1"] for r in module.evaluated_rows(tmp_path)] == [1.0, 0.04, 0.09, 0.8]  # latest run; else the last
    (tmp_path / "results.csv").unlink()
    assert [r["success_x1"] for r in module.evaluated_rows(tmp_path)] == [1.0, 0.09, 0.06, 0.8]
    (tmp_path / "plugins.json").write_text(json.dumps([rows[4]]))
    assert [r["success_x1"] for r in module.evaluated_rows(tmp_path)] == [1.0, 0.09, 0.06, 0.9]


def test_the_security_table_names_what_each_attacker_knew(tmp_path, monkeypatch):
    module = study("security_table", monkeypatch)

    def made(folder, **aware):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "poison.json").write_text(json.dumps({"defense_awareness": aware or None}))
        return module.variant(tmp_path, folder)

    clean = str(tmp_path / "ebm/clean_holdout_400steps/runs/x/checkpoints/last.ckpt")
    assert made("a", ebm=clean, awareness="exact", chain_steps=150, eot=1) == \
        "exact gradient through T = 150, white-box (the defender's clean EBM)"
    assert made("b", ebm=clean, awareness="exact", chain_steps=150, eot=2) == \
        "exact gradient through T = 150, EOT over 2 draws, white-box (the defender's clean EBM)"
    assert made("c", ebm=str(tmp_path / "ebm/poisoned_blended_c0/runs/x/checkpoints/last.ckpt"), awareness="bpda",
                chain_steps=300, eot=1) == "BPDA through T = 300, grey-box (EBM poisoned_blended_c0)"
    assert made("d") == "not defense-aware"
