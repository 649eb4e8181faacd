"""The value a command line gives an option before it is parsed (the plug-in whose options the parser must add)."""

from __future__ import annotations

from pathlib import Path


def option_value(argv: list[str], name: str) -> str | None:
    """``--NAME VALUE`` or ``--NAME=VALUE`` in ``argv``, else ``NAME:`` in a ``--config`` YAML, else None."""
    flag = f"--{name}"
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv) and Path(argv[i + 1]).is_file():
            import yaml

            loaded = yaml.safe_load(Path(argv[i + 1]).read_text())
            if isinstance(loaded, dict) and loaded.get(name):
                return str(loaded[name])
    return None
