"""A parameter's constraint as data, for the parameters a run creates after its first step:
a checkpoint must recreate them as they were (a ``positive`` parameter stays positive) and can
hold no code, so a constraint is written as the name of Pyro's (or torch's) constraint, or of
its factory with the factory's arguments, e.g. ``{"factory": "interval", "args":
{"lower_bound": 0.0, "upper_bound": 2.0}}``.
"""

from __future__ import annotations

import pyro.distributions.constraints as constraints
from torch.distributions.constraints import Constraint

__all__ = ["constraint_from_data", "constraint_to_data"]


def constraint_to_data(constraint: Constraint, name: str) -> dict:
    """``constraint`` as data; a :class:`TypeError` naming the parameter when it cannot be
    written so that :func:`constraint_from_data` gives it back."""
    data = _encode(constraint)
    if data is not None:
        back = constraint_from_data(data)
        if type(back) is type(constraint) and _same(vars(back), vars(constraint)):
            return data
    raise TypeError(
        f"the parameter {name!r}, created after the run's first step, has the constraint "
        f"{constraint!r}, which a checkpoint cannot hold as data: register the parameter at "
        "the first step (create it before training), or give it a constraint of "
        "pyro.distributions.constraints"
    )


def constraint_from_data(data: dict) -> Constraint:
    """The constraint :func:`constraint_to_data` wrote."""
    if "name" in data:
        return getattr(constraints, data["name"])
    factory = getattr(constraints, data["factory"])
    args = {k: constraint_from_data(v) if isinstance(v, dict) else v
            for k, v in data["args"].items()}  # fmt: skip
    return factory(**args)


def _encode(constraint: object) -> dict | None:
    for name in dir(constraints):
        if getattr(constraints, name) is constraint:
            return {"name": name}
    factory = next((n for n in dir(constraints)
                    if getattr(constraints, n) is type(constraint)), None)  # fmt: skip
    if factory is None:
        return None
    args = {}
    for key, value in vars(constraint).items():
        if isinstance(value, Constraint):
            value = _encode(value)
            if value is None:
                return None
        elif not isinstance(value, (int, float, bool)):
            return None
        args[key] = value
    return {"factory": factory, "args": args}


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        type(a[k]) is type(b[k]) and _same(vars(a[k]), vars(b[k]))
        if isinstance(a[k], Constraint) else a[k] == b[k]
        for k in a
    )  # fmt: skip
