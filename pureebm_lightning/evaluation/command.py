"""``pureebm evaluate``: the evaluation protocol from a YAML (``--config``), options overriding it on the command line."""

from __future__ import annotations

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser


def build_parser() -> ArgumentParser:
    """The options of ``pureebm evaluate``: the fields of :class:`Evaluation`, grouped as in its YAML."""
    from pureebm_lightning.evaluation.settings import Evaluation

    parser = ArgumentParser(
        prog="pureebm evaluate",
        description="The paper's evaluation protocol end to end: split, poisons, the clean and the poisoned-split EBM, "
        "defenses (none, JPEG, PureEBM over a sweep of T), victims, results.md with its checks, and plots. "
        "`pureebm evaluate --config configs/evaluate/digits.yaml` (bundled data); an interrupted run resumes.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML with any of the options below")
    parser.add_class_arguments(Evaluation, skip={"quick", "fresh"})
    parser.add_argument("--quick", action=ActionYesNo, default=False,
                        help="one target class, tiny EBMs, T in {0, 10, 20}, 2 GM targets, 5-epoch victims: checks the "
                        "pipeline in minutes; its numbers say nothing about the method")
    parser.add_argument("--fresh", action=ActionYesNo, default=False,
                        help="delete --out (a folder this command wrote) first instead of resuming")
    return parser


def with_quick(argv: list[str]) -> list[str]:
    """``argv`` with the options of ``--quick`` placed after its configs: options that follow them still override them."""
    if not any(arg == "--quick" or arg.lower() == "--quick=true" for arg in argv):
        return list(argv)
    from pureebm_lightning.evaluation.settings import QUICK

    after = 0
    for i, arg in enumerate(argv):
        if arg == "--config":
            after = i + 2
        elif arg.startswith("--config="):
            after = i + 1
    return [*argv[:after], *QUICK, *argv[after:]]


def settings(argv: list[str]):
    """The :class:`Evaluation` that ``argv`` asks for."""
    from pureebm_lightning.evaluation.settings import Evaluation

    parser = build_parser()
    namespace = parser.parse_args(with_quick(argv))
    made = parser.instantiate(namespace) if hasattr(parser, "instantiate") else parser.instantiate_classes(namespace)
    fields = {k: made[k] for k in Evaluation.__dataclass_fields__ if k in made}
    return Evaluation(**fields)


def evaluate(argv: list[str]) -> dict:
    """Run the protocol ``argv`` describes; its summary (also in ``out/results.json``)."""
    from lightning.pytorch.utilities import disable_possible_user_warnings

    from pureebm_lightning.evaluation.protocol import run

    cfg = settings(argv)
    disable_possible_user_warnings()
    return run(cfg, argv)
