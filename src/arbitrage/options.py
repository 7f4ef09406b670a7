"""Settings that components declare about themselves.

A policy lists its `options` (e.g. the router's `decide_after`), a model loader its own (a plugin backend's
setting); `run`, `sweep` and `serve` build their command-line flags from these declarations, the server its
request fields, and values are checked here, once, with errors that name the flag on the command line and the
field in a request. Adding a policy with an option, or a backend with a setting, touches no other file.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

TYPES = (int, float, bool, str)


@dataclass(frozen=True)
class Option:
    """One setting: its name (a Python identifier; the flag is `--name-with-dashes`), type, default, inclusive
    bounds for numbers, a help line, and whether a server request may set it."""

    name: str
    type: type = int
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    request: bool = True

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"option {self.name!r}: type must be one of {TYPES}")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def _bounds(self) -> str:
        lo = "" if self.minimum is None else f">= {self.minimum:g}"
        hi = "" if self.maximum is None else f"<= {self.maximum:g}"
        return " and ".join(x for x in (lo, hi) if x)

    def check(self, value: Any, *, field: bool = False) -> Any:
        """The value, converted and checked; a ConfigError naming the flag (or, with `field`, the request field)
        when it is of the wrong type or out of range. None stays None (not given)."""
        if value is None:
            return None
        name = f"'{self.name}'" if field else self.flag
        if self.type is bool:
            if not isinstance(value, bool):
                raise self._error(f"{name} must be true or false, not {value!r}")
            return value
        if self.type is str:
            if not isinstance(value, str):
                raise self._error(f"{name} must be a string, not {value!r}")
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (self.type is int and not float(value).is_integer())
        ):
            raise self._error(f"{name} must be {'an integer' if self.type is int else 'a number'}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self._error(f"{name} must be finite, not {value!r}")
        value = self.type(value)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise self._error(f"{name} must be {self._bounds()}, not {value!r}")
        return value

    def _error(self, message: str) -> ConfigError:
        return ConfigError(message, self.name, message)

    def add_to(self, parser: argparse.ArgumentParser | Any, who: str = "") -> None:
        """A flag for this option (`who`: which components take it, shown in the help)."""
        text = (f"{who}: " if who else "") + self.help
        if self.default is not None and self.type is not bool:
            text += f" (default: {self.default})"
        if self.type is bool:
            parser.add_argument(self.flag, dest=self.name, action="store_true", default=None, help=text)
        else:
            parser.add_argument(
                self.flag, dest=self.name, type=self.type, default=None, help=text, metavar=self.name.upper()
            )


def merged(declarations: Iterable[tuple[str, Iterable[Option]]]) -> dict[str, tuple[Option, list[str]]]:
    """Options by name over several components ((owner, options) pairs): each with the owners that take it. Two
    components may share an option only if they declare it alike."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for owner, options in declarations:
        for opt in options:
            if opt.name in out:
                known, owners = out[opt.name]
                if (known.type, known.minimum, known.maximum) != (opt.type, opt.minimum, opt.maximum):
                    raise ValueError(f"option {opt.name!r} is declared differently by {owners[0]} and {owner}")
                owners.append(owner)
            else:
                out[opt.name] = (opt, [owner])
    return out
