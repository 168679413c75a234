"""Fast construction for the frozen records made once per request on the hot path.

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__`` (to get
past its own ``__setattr__``), which costs about 0.2 µs a field: with several records per request
(claimed, answered, completed, read back) that was a sixth of the engine's time per request with the
scripted backend. ``quick_init`` replaces it with one that fills the instance's ``__dict__``
directly; everything else (immutability, equality, hashing, repr, ``replace``) stays the dataclass's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """Give a frozen dataclass (without slots or ``__post_init__``) a fast ``__init__``."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or hasattr(cls, "__slots__") or hasattr(cls, "__post_init__"):
        raise TypeError(f"quick_init needs a frozen dataclass without slots or __post_init__: {cls!r}")
    env: dict[str, Any] = {}
    args, body, names = [], [], []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        names.append(f.name)
        if not f.init:
            raise TypeError(f"quick_init does not handle init=False fields: {cls.__name__}.{f.name}")
        if f.default is not dataclasses.MISSING:
            env[f"_d_{f.name}"] = f.default
            args.append(f"{f.name}=_d_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            env[f"_f_{f.name}"] = f.default_factory
            env["_MISSING"] = dataclasses.MISSING
            args.append(f"{f.name}=_MISSING")
            body.append(f"    if {f.name} is _MISSING: {f.name} = _f_{f.name}()")
        else:
            args.append(f.name)
    items = ", ".join(f"{n!r}: {n}" for n in names)
    source = (f"def __init__(self, {', '.join(args)}):\n" + "\n".join(body) + ("\n" if body else "")
              + f"    self.__dict__.update({{{items}}})\n")
    exec(source, env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    # (setattr: assigning to __init__ needs a "type: ignore" that mypy versions disagree on)
    setattr(cls, "__init__", init)  # noqa: B010
    return cls
