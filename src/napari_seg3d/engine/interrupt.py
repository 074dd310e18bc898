"""Stop a long forward or backward pass between two layers, not at the end of the step.

An iteration on a large patch on a busy CPU can take many seconds, a self-training round over a
large volume minutes; *Stop*, Ctrl-C and SIGTERM must take effect within about a second. Inside
:func:`interruptible`, every layer run by this thread checks a :class:`threading.Event` before
it computes (and again as its gradient arrives in the backward pass) and raises
:class:`Interrupted` once the event is set. The caller then drops the unfinished step: weights
and optimizer state are those of the last finished one.

The checks are process-wide module hooks that look up the calling thread, so they are never
copied with a network (``copy.deepcopy``, a saved model) and other threads are not affected.
"""

from __future__ import annotations

import contextlib
import threading
from functools import partial

import torch
from torch.nn.modules import module as _module

_events: dict[int, threading.Event] = {}
_lock = threading.Lock()
_handles: list = []


class Interrupted(Exception):
    """The work was stopped between two layers because its stop event was set."""


def _check_grad(event: threading.Event, grad):
    if event.is_set():
        raise Interrupted
    return grad


def _before(module, args) -> None:
    event = _events.get(threading.get_ident())
    if event is not None and event.is_set():
        raise Interrupted


def _after(module, args, output) -> None:
    event = _events.get(threading.get_ident())
    if event is None or next(module.children(), None) is not None:
        return
    # the backward pass may run in another thread (CUDA): the hook carries its event
    if isinstance(output, torch.Tensor) and output.requires_grad:
        output.register_hook(partial(_check_grad, event))


@contextlib.contextmanager
def interruptible(event: threading.Event):
    """Within the block, layers run by this thread raise :class:`Interrupted` once ``event`` is
    set (before each layer's forward and as each gradient arrives)."""
    ident = threading.get_ident()
    with _lock:
        if not _handles:
            _handles.append(_module.register_module_forward_pre_hook(_before))
            _handles.append(_module.register_module_forward_hook(_after))
        _events[ident] = event
    try:
        yield
    finally:
        with _lock:
            _events.pop(ident, None)
            if not _events:
                while _handles:
                    _handles.pop().remove()
