"""How a triggered attack's trigger is put on an image (``poison.json``'s ``trigger.mode``): one registry read by the
attacks that write poisoned folders and by the data module that triggers test images.

A mode is a function ``(x, trigger, spec, magnification) -> x`` on images in [-1, 1] (the result is clamped to
[-1, 1] here); ``trigger`` is the array of ``trigger.file``; ``spec`` is the ``trigger`` entry of ``poison.json``.
An attack that needs a new mode registers it in its own module with ``@register_trigger_mode("name")``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from pureebm_lightning.registry import Registry

TriggerFunction = Callable[[Tensor, Tensor, dict, float], Tensor]
#: every mode; the attack modules (which may add modes) are imported when a name is not found among these
TRIGGER_MODES: Registry[TriggerFunction | None] = Registry("trigger mode", ("pureebm_lightning.poisoning.attacks",))
register_trigger_mode = TRIGGER_MODES.register


@register_trigger_mode("additive")
def additive(x: Tensor, trigger: Tensor, spec: dict, magnification: float) -> Tensor:
    """x + m * trigger (Narcissus; its paper tests at m = 3, PureGen at 1)."""
    return x + magnification * trigger.to(x)


@register_trigger_mode("blend")
def blend(x: Tensor, trigger: Tensor, spec: dict, magnification: float) -> Tensor:
    """(1 - alpha) x + alpha * trigger (Blended)."""
    alpha = float(spec.get("alpha", 0.2))
    return (1 - alpha) * x + alpha * trigger.to(x)


@register_trigger_mode("patch")
def patch(x: Tensor, trigger: Tensor, spec: dict, magnification: float) -> Tensor:
    """The trigger pasted with its top-left corner at ``position`` [row, col] (BadNets)."""
    out = x.clone()
    (r, c), (h, w) = tuple(spec.get("position", (0, 0))), trigger.shape[-2:]
    out[..., r : r + h, c : c + w] = trigger.to(x)
    return out


#: the poison test images already carry the attack's own trigger (BackdoorBench's bd_test): nothing to apply
TRIGGER_MODES.register("images")(None)


def uses_trigger_array(mode: str) -> bool:
    """Whether ``mode`` applies a trigger array (False: the poisoned test images come triggered)."""
    return mode_function(mode) is not None


def mode_function(mode: str) -> TriggerFunction | None:
    try:
        return TRIGGER_MODES[mode]
    except KeyError as err:
        raise ValueError(str(err).strip("'\"")) from err


def apply_trigger(x: Tensor, trigger: Tensor, spec: dict[str, Any], magnification: float | None = None) -> Tensor:
    """Triggered copies of images ``x`` in [-1, 1] (N, C, H, W), clamped to [-1, 1]; ``spec`` is ``poison.json``'s
    ``trigger`` entry (``mode`` and its parameters), ``magnification`` overrides ``spec["magnification"]``."""
    function = mode_function(spec["mode"])
    if function is None:
        raise ValueError(f"trigger mode {spec['mode']!r} has no trigger to apply: its poisoned test images come triggered")
    m = float(spec.get("magnification", 1.0)) if magnification is None else magnification
    return function(x, trigger, spec, m).clamp(-1, 1)
