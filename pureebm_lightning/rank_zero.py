"""Work that global rank 0 does for every rank, with its outcome (or its failure) shared so that no rank waits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy


def run_on_rank_zero(strategy: Strategy | None, fn: Callable[[], Any]) -> Any:
    """``fn()`` on global rank 0 only; its result on every rank, or the exception it raised raised on every rank,
    so that no rank is left waiting for rank 0. ``strategy`` None: a single process."""
    if strategy is None:
        return fn()
    outcome = None
    if strategy.is_global_zero:
        try:
            outcome = (True, fn())
        except Exception as err:  # noqa: BLE001 - raised again on every rank below
            outcome = (False, err)
    ok, value = strategy.broadcast(outcome, src=0)
    if not ok:
        raise value
    return value
