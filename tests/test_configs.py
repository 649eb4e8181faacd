"""Every YAML in configs/ parses and is accepted by the command that reads it (a typo in a key or a class path fails
here, not in a user's run)."""

from __future__ import annotations

import pytest
import yaml

from pureebm_lightning.cli import main

from .conftest import CONFIGS

#: a fragment (configs/<folder>/x.yaml) is checked on top of the config it is meant to follow
BASE = {"data/cinic10_imagenet.yaml": "ebm.yaml", "data": "classifier_digits.yaml", "trainer": "ebm.yaml"}
ALL = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if p.parent.name != "evaluate")  # evaluate/: test_evaluation


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pureebm"])


def test_the_configs_are_found():
    assert {"ebm.yaml", "ebm_digits.yaml", "classifier.yaml", "classifier_digits.yaml"} <= set(ALL) and len(ALL) >= 10


@pytest.mark.parametrize("config", ALL)
def test_every_config_parses_and_is_accepted_by_pureebm_fit(config, capsys):
    loaded = yaml.safe_load((CONFIGS / config).read_text())
    assert isinstance(loaded, dict) and loaded
    folder = config.split("/")[0] if "/" in config else None
    base = BASE.get(config, BASE.get(folder)) if folder else None
    stack = (["--config", str(CONFIGS / base)] if base else []) + ["--config", str(CONFIGS / config)]
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *stack, "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {"model", "data", "trainer"} <= set(printed)
    for key in loaded:  # what the file sets is what the command resolved
        if key in ("model", "data") and isinstance(loaded[key], dict) and "class_path" in loaded[key]:
            assert printed[key]["class_path"].rsplit(".", 1)[-1] == loaded[key]["class_path"].rsplit(".", 1)[-1]
