"""The one home of input validation (messages name the argument, what was expected and what arrived).

* :mod:`lightning_losses._validation.arguments`: constructor / recipe arguments (numbers, choices, type hints in
  words, state-dict keys), re-exported here (``from lightning_losses._validation import check_int``);
* :mod:`lightning_losses._validation.tensors`: call-time tensor inputs of the losses and the objective (shapes,
  dtypes, label ranges; free checks always, value checks that sync only with ``validate_args``).

Both sit in the lowest layer: they import nothing of the library but :mod:`lightning_losses.errors`.
"""

from __future__ import annotations

from lightning_losses._validation.arguments import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_probability_vector,
    check_state_keys,
    describe_type,
    nearest,
    qualify,
    suggest,
)

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_probability_vector",
    "check_state_keys",
    "describe_type",
    "nearest",
    "qualify",
    "suggest",
]
