"""Keep the calling thread's alternate signal stack across a call into OpenVINO's CPU plugin.

Compiling a model with OpenVINO's CPU plugin (2025 on, Linux) maps a fresh alternate signal stack for the calling
thread and remembers the one before it; destroying the compiled model restores that one and unmaps its own. Two
compiled models destroyed in the order they were made (any two that Python frees first-in, first-out) leave the
thread's alternate stack pointing at unmapped memory. Python's signal handlers run on that stack, so the next
handled signal (SIGINT's KeyboardInterrupt, SIGCHLD where torch's DataLoader watches its workers) kills the
process with SIGSEGV instead. Seen in this project's test workers: a subprocess ending after `dtype='auto'` ran.
Putting the thread's own stack back right after each compile keeps every plugin stack out of use, so none is ever
restored after it is gone (the plugin restores only a stack that is still current).
"""
from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ['current_signal_stack', 'keep_signal_stack']


class _StackT(ctypes.Structure):  # struct stack_t of <signal.h> on Linux
    _fields_ = [('ss_sp', ctypes.c_void_p), ('ss_flags', ctypes.c_int), ('ss_size', ctypes.c_size_t)]


def _sigaltstack() -> ctypes._CFuncPtr | None:
    if not sys.platform.startswith('linux'):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):
        return None


_SIGALTSTACK = _sigaltstack()


def current_signal_stack() -> tuple[int, int, int] | None:
    """(address, size, flags) of the calling thread's alternate signal stack; None where it cannot be read."""
    if _SIGALTSTACK is None:
        return None
    current = _StackT()
    if _SIGALTSTACK(None, ctypes.byref(current)) != 0:
        return None
    return current.ss_sp or 0, current.ss_size, current.ss_flags


@contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had before it."""
    if _SIGALTSTACK is None:
        yield
        return
    before = _StackT()
    saved = _SIGALTSTACK(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if saved:
            # SS_ONSTACK is a state, not a flag sigaltstack accepts: pass the stack and whether it is disabled
            before.ss_flags &= ~1
            _SIGALTSTACK(ctypes.byref(before), None)
