"""``map_in_processes``: a function over many items in several processes, in order, with a progress bar.

What ``prepare`` uses to decode a split's frames where cores are many (an ablation's parent on a GPU
machine: the default world's 10 000 frames take about 9 s of one core here, and the parent prepares
twice). Processes are spawned, not forked: the caller may already hold torch's thread pools or a CUDA
context, which a forked child must not inherit. A spawned process imports the package again (about
2 s), so a caller with several maps opens one pool (``process_pool``) and hands it to each.
"""
from __future__ import annotations

import contextlib
from multiprocessing.pool import Pool
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")
Result = TypeVar("Result")


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[Pool | int]:
    """A pool of ``workers`` spawned processes, closed on leaving; 1 (no pool) where ``workers`` <= 1."""
    if workers <= 1:
        yield 1
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield pool


def map_in_processes(function: Callable[[Item], Result], items: Iterable[Item], workers: int | Pool = 1,
                     desc: str = "", progress: bool = False) -> list[Result]:
    """``[function(item) for item in items]``, computed by ``workers`` (a number of spawned processes, or an
    open ``Pool``) where more than one; ``function`` must be a module-level function and ``items``
    picklable. The same list either way."""
    items = list(items)
    if isinstance(workers, int) and workers > 1 and len(items) > 1:
        with process_pool(min(workers, len(items))) as pool:
            return map_in_processes(function, items, pool, desc, progress)
    if not isinstance(workers, Pool) or len(items) <= 1:
        return [function(item) for item in tqdm(items, desc=desc, disable=not progress, leave=False)]
    processes = workers._processes  # noqa: SLF001 (the pool's size: Pool has no public getter)
    chunksize = max(1, min(64, len(items) // (4 * processes)))  # a few chunks per process: balanced, few messages
    return list(tqdm(workers.imap(function, items, chunksize=chunksize), total=len(items), desc=desc,
                     disable=not progress, leave=False))
