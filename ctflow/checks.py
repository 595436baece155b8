"""Argument checks shared across ctflow.

Every check takes ``(value, name, ...)`` and returns the checked value in its canonical type
(``int``, ``float``) or raises. A value of the wrong type (a bool or a string for a number, a
float for an int) raises :class:`ArgumentTypeError`, a value of the right type outside the allowed
range raises ``ValueError``; messages name the argument, what was expected and what was got.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable
from typing import Any, Literal, TypeVar

__all__ = [
    "ArgumentTypeError",
    "integer",
    "positive_int",
    "non_negative_int",
    "real_number",
    "in_interval",
    "probability",
    "choice",
]

T = TypeVar("T")
Closed = Literal["both", "left", "right", "neither"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type.

    Also a ``ValueError``, so that code catching ``ValueError`` for a bad argument keeps working
    whether the value or its type was wrong.
    """


def _got(value: Any, typed: bool = False) -> str:
    """``repr`` of a scalar (with its type if ``typed``), the type name of anything else."""
    if value is None or isinstance(value, (numbers.Number, str, bytes)):
        text = repr(value)
        text = text if len(text) <= 60 else f"{text[:57]}..."
        return f"{text} ({type(value).__name__})" if typed else text
    kind = type(value).__name__
    return f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}"


def _or_none(allow_none: bool) -> str:
    return " or None" if allow_none else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_kind(minimum: int | None) -> str:
    if minimum is None:
        return "an int"
    if minimum == 1:
        return "a positive int"
    if minimum == 0:
        return "a non-negative int"
    return f"an int >= {minimum}"


def integer(value: Any, name: str, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` (any integral type but bool), at least ``minimum`` when given."""
    if value is None and allow_none:
        return None
    expected = f"{name} must be {_int_kind(minimum)}{_or_none(allow_none)}"
    if not _is_int(value):
        raise ArgumentTypeError(f"{expected}, got {_got(value, typed=True)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{expected}, got {value!r}")
    return int(value)


def positive_int(value: Any, name: str, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """``value`` as an ``int >= minimum`` (1 by default); ``None`` passes with ``allow_none``.

    >>> positive_int(3, "n_layers")
    3
    >>> positive_int(0, "n_layers")
    Traceback (most recent call last):
        ...
    ValueError: n_layers must be a positive int, got 0
    """
    return integer(value, name, minimum=minimum, allow_none=allow_none)


def non_negative_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an ``int >= 0``; ``None`` passes with ``allow_none``."""
    return integer(value, name, minimum=0, allow_none=allow_none)


def real_number(
    value: Any, name: str, *, positive: bool, allow_none: bool = False, finite: bool = True
) -> float | None:
    """``value`` as a ``float`` that is ``> 0`` (``positive``) or ``>= 0``, and finite unless
    ``finite=False`` (which lets ``math.inf`` through; NaN never passes)."""
    if value is None and allow_none:
        return None
    sign = "a positive" if positive else "a non-negative"
    if not _is_real(value):
        raise ArgumentTypeError(
            f"{name} must be {sign} number{_or_none(allow_none)}, got {_got(value, typed=True)}"
        )
    number = float(value)
    if math.isnan(number) or number < 0 or (positive and number == 0) or (finite and math.isinf(number)):
        kind = " finite" if finite else ""
        raise ValueError(f"{name} must be {sign}{kind} number{_or_none(allow_none)}, got {value!r}")
    return number


_BRACKETS: dict[str, tuple[str, str]] = {
    "both": ("[", "]"),
    "left": ("[", ")"),
    "right": ("(", "]"),
    "neither": ("(", ")"),
}


def in_interval(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    closed: Closed = "left",
    allow_none: bool = False,
) -> float | None:
    """``value`` as a ``float`` in the interval from ``low`` to ``high``; ``closed`` says which
    ends belong to it (``"left"``: ``[low, high)``)."""
    if value is None and allow_none:
        return None
    left, right = _BRACKETS[closed]
    expected = f"{name} must lie in {left}{low:g}, {high:g}{right}{_or_none(allow_none)}"
    if not _is_real(value):
        raise ArgumentTypeError(f"{expected}, got {_got(value, typed=True)}")
    number = float(value)
    above = number >= low if left == "[" else number > low
    below = number <= high if right == "]" else number < high
    if not (above and below):  # NaN fails both
        raise ValueError(f"{expected}, got {value!r}")
    return number


def probability(
    value: Any, name: str, *, include_one: bool = False, allow_none: bool = False
) -> float | None:
    """``value`` as a ``float`` in ``[0, 1)``, or ``[0, 1]`` with ``include_one``."""
    return in_interval(value, name, 0, 1, closed="both" if include_one else "left", allow_none=allow_none)


def choice(value: T, name: str, options: Iterable[Any]) -> T:
    """``value`` itself if it is one of ``options``; else ``ValueError: unknown <name> ...; valid: ...``."""
    options = tuple(options)
    if not (isinstance(value, Hashable) and value in options):
        raise ValueError(f"unknown {name} {_got(value)}; valid: {', '.join(map(str, options))}")
    return value
