"""The attacks of ``pureebm poison <attack>``: one module each, whose registered function's typed signature (with
its defaults and its docstring's Args) is the attack's configuration and its command-line options.

An attack module defines ``@register_attack() def <module name>(clean: CleanData, ...) -> Poisoning``; the
parameters named in :data:`RUN_PARAMETERS` are filled by ``pureebm poison`` from its own options.
"""

from pureebm_lightning.registry import Registry

ATTACKS = Registry("attack", ("pureebm_lightning.poisoning.attacks",), by_module=True)
register_attack = ATTACKS.register
#: parameters an attack may take that the command fills itself (the clean data, and its run-wide options)
RUN_PARAMETERS = ("clean", "seed", "accelerator", "progress")
