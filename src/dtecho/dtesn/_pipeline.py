"""Two threads over a chain of windows: one integrates them in order, both process them.

fit and predict walk a long sequence window by window: each window's states depend on the
one before (a chain, one thread), while what is then done with a window (the readout's
normal equations, the outputs) is independent of the others. ``overlapped`` runs the chain
on a helper thread and the per-window work on the caller's thread, oldest window first;
when the work is the slower part and the helper is ``ahead`` windows ahead, the helper
takes the newest waiting window's work itself instead of idling, so both cores stay busy
and the memory held stays bounded (at most ``ahead`` + 2 windows).

Which thread runs a window's work never changes its result (``work`` must be a function of
its argument alone), and results are yielded in window order, so a caller that reduces
them in that order gets the same answer bit for bit whatever the timing. Both callables
should release the GIL for most of their time (compiled kernels, BLAS), or nothing
overlaps.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def overlapped(
    produce: Callable[[int], Item],
    count: int,
    work: Callable[[Item], Result],
    ahead: int = 2,
) -> Iterator[Result]:
    """Yield work(produce(0)), …, work(produce(count − 1)) in order, with produce(i) called
    in order on a helper thread and each work call on whichever thread is free (see the
    module docstring). An exception in either is raised here; closing the iterator early
    stops the helper after its current call."""
    lock = threading.Condition()
    waiting: deque[tuple[int, Item]] = deque()  # produced, work not started; oldest left
    done: dict[int, Result] = {}
    failure: list[BaseException] = []
    stop = threading.Event()

    def help_with_newest() -> None:
        """Under the lock on entry and exit: run the newest waiting window's work."""
        i, item = waiting.pop()
        lock.release()
        try:
            result = work(item)
        finally:
            lock.acquire()
        done[i] = result
        lock.notify_all()

    def helper() -> None:
        try:
            for i in range(count):
                with lock:
                    while len(waiting) >= ahead and not stop.is_set():
                        help_with_newest()
                if stop.is_set():
                    return
                item = produce(i)
                with lock:
                    waiting.append((i, item))
                    lock.notify_all()
            with lock:
                while waiting and not stop.is_set():
                    help_with_newest()
        except BaseException as error:  # handed to the caller's thread
            with lock:
                failure.append(error)
                lock.notify_all()

    thread = threading.Thread(target=helper, name="dtesn-windows", daemon=True)
    thread.start()
    try:
        for i in range(count):
            with lock:
                while i not in done and not (waiting and waiting[0][0] == i) and not failure:
                    lock.wait()
                if failure:
                    raise failure[0]
                mine = i not in done
                if mine:
                    item = waiting.popleft()[1]
                else:
                    result = done.pop(i)
            if mine:
                result = work(item)
            yield result
    finally:
        stop.set()  # the helper never waits on the lock, so it sees this after its call
        thread.join()
