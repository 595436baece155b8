"""The shared argument checks of ctflow.checks."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctflow import checks
from ctflow.checks import (
    ArgumentTypeError,
    choice,
    in_interval,
    integer,
    non_negative_int,
    positive_int,
    probability,
    real_number,
)


def test_checks_is_a_leaf_module():
    tree = ast.parse(Path(checks.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert imported <= {"__future__", "math", "numbers", "collections", "typing"}


def test_argument_type_error_is_both_type_and_value_error():
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)])
def test_positive_int_accepts_and_converts(value):
    out = positive_int(value, "n")
    assert out == value and type(out) is int


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "n must be a positive int, got 0"),
        (-3, ValueError, "n must be a positive int, got -3"),
        (2.5, ArgumentTypeError, r"n must be a positive int, got 2\.5 \(float\)"),
        (2.0, ArgumentTypeError, r"got 2\.0 \(float\)"),
        (True, ArgumentTypeError, r"got True \(bool\)"),
        ("3", ArgumentTypeError, r"got '3' \(str\)"),
        (None, ArgumentTypeError, r"n must be a positive int, got None \(NoneType\)"),
        (torch.tensor(3), ArgumentTypeError, "got a Tensor"),
    ],
)
def test_positive_int_rejects(value, error, message):
    with pytest.raises(error, match=message):
        positive_int(value, "n")


def test_positive_int_options():
    assert positive_int(None, "patience", allow_none=True) is None
    with pytest.raises(ValueError, match="patience must be a positive int or None, got 0"):
        positive_int(0, "patience", allow_none=True)
    assert positive_int(0, "context_dim", minimum=0) == 0
    with pytest.raises(ValueError, match="context_dim must be a non-negative int, got -1"):
        positive_int(-1, "context_dim", minimum=0)
    assert positive_int(2, "levels", minimum=2) == 2
    with pytest.raises(ValueError, match="levels must be an int >= 2, got 1"):
        positive_int(1, "levels", minimum=2)


def test_integer_and_non_negative_int():
    assert integer(-5, "seed") == -5 and integer(None, "seed", allow_none=True) is None
    with pytest.raises(TypeError, match=r"seed must be an int or None, got 1\.5 \(float\)"):
        integer(1.5, "seed", allow_none=True)
    assert non_negative_int(0, "k") == 0
    with pytest.raises(ValueError, match="k must be a non-negative int, got -2"):
        non_negative_int(-2, "k")


@pytest.mark.parametrize("value", [0.5, 3, np.float32(1e-3), np.int64(2)])
def test_real_number_accepts_and_converts(value):
    out = real_number(value, "lr", positive=True)
    assert out == pytest.approx(float(value)) and type(out) is float


def test_real_number_non_negative_accepts_zero():
    assert real_number(0, "weight_decay", positive=False) == 0.0
    with pytest.raises(ValueError, match="lr must be a positive finite number, got 0"):
        real_number(0, "lr", positive=True)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (-1.0, ValueError, r"x must be a non-negative finite number, got -1\.0"),
        (math.nan, ValueError, "x must be a non-negative finite number, got nan"),
        (math.inf, ValueError, "x must be a non-negative finite number, got inf"),
        ("fast", ArgumentTypeError, r"x must be a non-negative number, got 'fast' \(str\)"),
        (False, ArgumentTypeError, r"got False \(bool\)"),
        (None, ArgumentTypeError, "got None"),
        (1 + 2j, ArgumentTypeError, r"\(complex\)"),
        ([1.0], ArgumentTypeError, "got a list"),
    ],
)
def test_real_number_rejects(value, error, message):
    with pytest.raises(error, match=message):
        real_number(value, "x", positive=False)


def test_real_number_options():
    assert real_number(None, "grad_clip", positive=True, allow_none=True) is None
    with pytest.raises(ValueError, match="grad_clip must be a positive finite number or None, got -1"):
        real_number(-1, "grad_clip", positive=True, allow_none=True)
    with pytest.raises(TypeError, match="grad_clip must be a positive number or None, got 'x'"):
        real_number("x", "grad_clip", positive=True, allow_none=True)
    assert real_number(math.inf, "aux_atol", positive=True, finite=False) == math.inf
    with pytest.raises(ValueError, match="aux_atol must be a positive number, got nan"):
        real_number(math.nan, "aux_atol", positive=True, finite=False)


def test_in_interval_ends():
    assert in_interval(0, "a", 0, 0.5) == 0.0
    with pytest.raises(ValueError, match=r"a must lie in \[0, 0\.5\), got 0\.5"):
        in_interval(0.5, "a", 0, 0.5)
    assert in_interval(1, "rho", -1, 1, closed="both") == 1.0
    with pytest.raises(ValueError, match=r"rho must lie in \[-1, 1\], got -1\.5"):
        in_interval(-1.5, "rho", -1, 1, closed="both")
    with pytest.raises(ValueError, match=r"f must lie in \(0, 1\), got 0"):
        in_interval(0, "f", 0, 1, closed="neither")
    with pytest.raises(ValueError, match=r"f must lie in \(0, 1\], got 0"):
        in_interval(0, "f", 0, 1, closed="right")
    assert in_interval(1, "f", 0, 1, closed="right") == 1.0
    with pytest.raises(ValueError, match="got nan"):
        in_interval(math.nan, "f", 0, 1)
    with pytest.raises(ArgumentTypeError, match=r"f must lie in \[0, 1\), got '0\.5' \(str\)"):
        in_interval("0.5", "f", 0, 1)
    assert in_interval(None, "f", 0, 1, allow_none=True) is None


def test_probability():
    assert probability(0, "p") == 0.0 and probability(0.999, "p") == 0.999
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\), got 1"):
        probability(1, "dropout")
    assert probability(1, "cut", include_one=True) == 1.0
    with pytest.raises(ValueError, match=r"cut must lie in \[0, 1\], got 1\.5"):
        probability(1.5, "cut", include_one=True)
    with pytest.raises(ArgumentTypeError, match="p must lie in"):
        probability(True, "p")


def test_choice():
    assert choice("rms", "error norm", ("rms", "max")) == "rms"
    assert choice("b", "kind", {"a": 1, "b": 2}) == "b"  # any iterable of options
    with pytest.raises(ValueError, match="unknown error norm 'l1'; valid: rms, max"):
        choice("l1", "error norm", ("rms", "max"))
    with pytest.raises(ValueError, match="unknown kind None; valid: a"):
        choice(None, "kind", ["a"])
    with pytest.raises(ValueError, match="unknown kind a list; valid: a"):
        choice(["a"], "kind", ["a"])  # unhashable: never an option
    with pytest.raises(ValueError, match="unknown kind a ndarray"):
        choice(np.array(["a"]), "kind", ["a"])
