"""``concurrent.futures`` with hangfree's ``ProcessPoolExecutor``: ``import hangfree.futures
as cf`` in place of ``import concurrent.futures as cf``. Every other name is the stdlib's."""

from __future__ import annotations

import concurrent.futures as _futures
# Annotations only (strings here): importing typing costs a pool's creation ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from hangfree.executor import ProcessPoolExecutor

__all__ = [*_futures.__all__]


def __getattr__(name: str) -> Any:
    return getattr(_futures, name)
