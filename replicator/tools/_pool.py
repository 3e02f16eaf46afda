"""Work over threads that stops cleanly on Ctrl-C: pending items dropped, running ones finished."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

__all__ = ["parallel"]

_T = TypeVar("_T")
_R = TypeVar("_R")


def parallel(
    fn: Callable[[_T], _R], items: Iterable[_T], *, workers: int, name: str
) -> Iterator[_R]:
    """``fn`` of each item over ``workers`` threads, results in order.

    On KeyboardInterrupt (or any error of the caller's loop) the items not
    started are cancelled and the running ones finish before it propagates, so
    that each item is either done whole (with its own clean-up) or not begun.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        futures = [pool.submit(fn, item) for item in items]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
