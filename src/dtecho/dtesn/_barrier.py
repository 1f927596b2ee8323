"""A busy-waiting barrier for compiled kernels whose threads meet once per time step.

A sequence's steps form a chain, so threads sharing one sequence (each owning some rows of
the state) must all finish step t before any starts step t+1: tens of thousands of meetings
a second, each only microseconds apart. An operating-system wait costs more than a step, so
the threads spin on counters in shared memory instead: thread ``me`` publishes "done with t"
by storing t+1 in its own slot (a release store: its rows of the state are visible before
the count), then waits until every other slot reaches t+1 (acquire loads), with the CPU's
spin-wait hint in between. The counters only grow, so the barrier never needs resetting.

Spinning pays only while every thread has a core to itself: ``Reservoir`` uses it for one
sequence's rows when asked for ``n_jobs`` > 1, never inside fit (whose second thread forms
the normal equations meanwhile).
"""

from __future__ import annotations

import platform

import llvmlite.ir as llvm_ir
import numba
import numpy as np
from numba.core import cgutils
from numba.extending import intrinsic

SLOT = 16  # int64s between two threads' counters: 128 bytes, so no two share a cache line
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def counters(threads: int) -> np.ndarray:
    """Zeroed counters for a barrier of ``threads`` threads."""
    return np.zeros(threads * SLOT, np.int64)


def _slot_pointer(context, builder, signature, args):
    array_type = signature.args[0]
    array = context.make_array(array_type)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, array_type, array, [args[1]])


@intrinsic
def _load_acquire(typingctx, counters, index):
    """counters[index], read with acquire ordering."""

    def codegen(context, builder, signature, args):
        pointer = _slot_pointer(context, builder, signature, args)
        return builder.load_atomic(pointer, ordering="acquire", align=8)

    return numba.types.int64(counters, numba.types.int64), codegen


@intrinsic
def _store_release(typingctx, counters, index, value):
    """counters[index] = value, written with release ordering."""

    def codegen(context, builder, signature, args):
        pointer = _slot_pointer(context, builder, signature, args)
        builder.store_atomic(args[2], pointer, ordering="release", align=8)
        return context.get_dummy_value()

    return numba.types.void(counters, numba.types.int64, numba.types.int64), codegen


@intrinsic
def _spin_hint(typingctx):
    """x86 ``pause`` (yields the core's shared resources while spinning); nothing elsewhere."""

    def codegen(context, builder, signature, args):
        if _X86:
            hint = llvm_ir.FunctionType(llvm_ir.VoidType(), [])
            pause = cgutils.get_or_insert_function(builder.module, hint, "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()

    return numba.types.void(), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def arrive_and_wait(counters, me, threads, count):  # pragma: no cover - compiled
    """Thread ``me`` of ``threads`` has finished ``count`` steps; return once all have."""
    _store_release(counters, np.int64(me * SLOT), np.int64(count))
    for other in range(threads):
        if other != me:
            while _load_acquire(counters, np.int64(other * SLOT)) < count:
                _spin_hint()
