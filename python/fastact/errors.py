"""Exception types that satisfy code written against torch.

torch raises ``RuntimeError`` for most bad arguments (and ``ValueError`` for a
few, e.g. ``hardtanh(min_val > max_val)`` or a bad ``reduction``); fastact's
C++ checks raise ``ValueError`` / ``TypeError``; torch raises ``NotImplementedError`` (a
``RuntimeError``) for an unsupported dtype. Every such error leaving
``fastact.functional`` (and so ``fastact.nn``) is re-raised as one of the
classes below, which derive from both, with the same message (it names the
op and the bad value): ``except RuntimeError`` and ``except ValueError`` both
catch it.
"""
from __future__ import annotations

import functools

__all__ = ["FastactValueError", "FastactTypeError", "torch_errors"]


class FastactValueError(ValueError, RuntimeError):
    """A bad argument value: a ``ValueError`` and a ``RuntimeError``."""


class FastactTypeError(TypeError, NotImplementedError):
    """A bad argument type (e.g. an integer tensor): a ``TypeError`` and, as
    torch's "not implemented for 'Long'", a ``NotImplementedError`` (so a
    ``RuntimeError``)."""


def _translated(e: BaseException) -> BaseException | None:
    if isinstance(e, RuntimeError):
        return None
    if isinstance(e, ValueError):
        return FastactValueError(*e.args)
    if isinstance(e, TypeError):
        return FastactTypeError(*e.args)
    return None


def torch_errors(fn):
    """``fn`` with its ValueError / TypeError re-raised as the classes above.
    A call that raises nothing pays one try block."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as e:
            t = _translated(e)
            if t is None:
                raise
            raise t.with_traceback(e.__traceback__) from None

    return wrapper
