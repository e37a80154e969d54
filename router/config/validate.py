"""Validation helpers shared by the config loader and the admin API's request bodies.

Errors are collected, not raised one by one: a ``Fields`` reader over a mapping at a path
offers typed getters that record a ``FieldError`` ("regions[2].endpoint: must be an http(s)
URL") and return the default, then ``close()`` rejects the keys nobody asked for.

    errors: list[FieldError] = []
    with Fields(body, "", errors) as f:
        weight = f.integer("weight", 100, lo=0, hi=10_000)
        drain_s = f.duration("drain", 0.0, positive=False)
    if errors:
        raise ValidationError(errors)

A parser (``as_int(lo=0)``, ``as_duration()``...) is a callable that takes a raw value and
returns the typed one or raises ``ValueError(message)``; ``Fields.get`` adds the path.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TypeVar

from router.config.units import is_number, parse_duration, parse_percent, parse_size, show
from router.errors import RouterError

T = TypeVar("T")
S = TypeVar("S", bound=str)
Parser = Callable[[object], T]

_INT_TEXT = re.compile(r"[-+]?\d+")
_FLOAT_TEXT = re.compile(r"[-+]?\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(RouterError):
    """One or more field errors; ``str()`` is one "path: message" per line."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def as_details(self) -> list[dict[str, str]]:
        """JSON-able form for an admin error body's ``details``."""
        return [{"path": e.path, "message": e.message} for e in self.errors]


class ConfigError(ValidationError):
    """The config file (or a proposed config) is invalid; nothing was applied."""


class EnvText(str):
    """A string produced by ``${VAR}`` expansion: numeric and boolean getters accept it."""

    __slots__ = ()


class _Skip:
    """Marks a value whose error is already reported (e.g. an unset ``${VAR}``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SKIP"


SKIP: Final = _Skip()
_MISSING: Final = object()


def join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def list_items(value: object, path: str, errors: list[FieldError]) -> Iterator[tuple[str, object]]:
    """(path, item) for each element of a list value; None reads as empty."""
    if value is None or value is SKIP:
        return
    if not isinstance(value, list | tuple):
        errors.append(FieldError(path, f"expected a list, got {show(value)}"))
        return
    for i, item in enumerate(value):
        yield index(path, i), item


# -- parsers ---------------------------------------------------------------------------------


def _duration_text(seconds: float) -> str:
    """``0.01`` -> ``10ms``: a bound in the config's own units."""
    if seconds >= 1:
        return f"{seconds:g}s"
    if seconds >= 0.001:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def as_str(*, nonempty: bool = False, pattern: re.Pattern[str] | None = None) -> Parser[str]:
    def parse(value: object) -> str:
        if not isinstance(value, str):
            hint = (
                " (quote it)"
                if value is None or is_number(value) or isinstance(value, bool)
                else ""
            )
            raise ValueError(f"expected a string{hint}, got {show(value)}")
        text = str(value)
        if nonempty and not text:
            raise ValueError("must not be empty")
        if pattern is not None and not pattern.fullmatch(text):
            raise ValueError(f"must match {pattern.pattern}, got {show(value)}")
        return text

    return parse


def as_int(*, lo: int | None = None, hi: int | None = None) -> Parser[int]:
    def parse(value: object) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, EnvText) and _INT_TEXT.fullmatch(value.strip()):
            number = int(value)
        if number is None or (lo is not None and number < lo) or (hi is not None and number > hi):
            raise ValueError(f"expected an integer{_range_text(lo, hi)}, got {show(value)}")
        return number

    return parse


def as_float(*, lo: float | None = None, hi: float | None = None) -> Parser[float]:
    def parse(value: object) -> float:
        number: float | None = None
        if is_number(value) or (
            isinstance(value, EnvText) and _FLOAT_TEXT.fullmatch(value.strip())
        ):
            number = float(value)
        if (
            number is None
            or not math.isfinite(number)
            or (lo is not None and number < lo)
            or (hi is not None and number > hi)
        ):
            raise ValueError(f"expected a number{_range_text(lo, hi)}, got {show(value)}")
        return number

    return parse


def as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, EnvText) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected true or false, got {show(value)}")


def as_duration(*, positive: bool = True, hi: float | None = None) -> Parser[float]:
    """Seconds; ``positive`` demands > 0, otherwise >= 0; ``hi``: at most this."""

    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError(f"expected a duration > 0, got {show(value)}")
        if seconds < 0:
            raise ValueError(f"expected a duration >= 0, got {show(value)}")
        if hi is not None and seconds > hi:
            raise ValueError(f"expected a duration <= {_duration_text(hi)}, got {show(value)}")
        return seconds

    return parse


def as_size(*, positive: bool = False) -> Parser[int]:
    def parse(value: object) -> int:
        size = parse_size(value)
        if positive and size <= 0:
            raise ValueError(f"expected a size > 0, got {show(value)}")
        return size

    return parse


def as_percent(value: object) -> float:
    return parse_percent(value)


def as_choice(choices: tuple[S, ...]) -> Parser[S]:
    def parse(value: object) -> S:
        for choice in choices:
            if value == choice:
                return choice
        raise ValueError(f"expected one of {', '.join(choices)}, got {show(value)}")

    return parse


# -- the reader ------------------------------------------------------------------------------


class Fields:
    """Typed, error-collecting access to one mapping at ``path``; see the module docstring.

    ``None`` reads as an empty mapping (``reload:`` with nothing under it); anything else
    that is not a mapping is reported once and reads as empty.
    """

    __slots__ = ("_data", "_known", "_start", "errors", "path")

    def __init__(self, data: object, path: str, errors: list[FieldError]) -> None:
        self.path = path
        self.errors = errors
        self._known: list[str] = []
        self._start = len(errors)
        self._data: Mapping[object, object]
        if isinstance(data, Mapping):
            self._data = data
        else:
            self._data = {}
            if data is not None and data is not SKIP:
                self.errors.append(FieldError(path, f"expected a mapping, got {show(data)}"))

    def __repr__(self) -> str:
        return f"<Fields {self.path or '(root)'} keys={len(self._data)} errors={len(self.errors)}>"

    def __enter__(self) -> Fields:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()

    @property
    def clean(self) -> bool:
        """No error so far at or below this path: cross-field checks are meaningful."""
        return len(self.errors) == self._start

    def at(self, key: str) -> str:
        return join(self.path, key)

    def error(self, key: str | None, message: str) -> None:
        self.errors.append(FieldError(self.path if key is None else self.at(key), message))

    def has(self, key: str) -> bool:
        """True when the key is present (even as null); marks it known."""
        self._known.append(key)
        return key in self._data

    def raw(self, key: str, default: object = None) -> object:
        self._known.append(key)
        return self._data.get(key, default)

    def get(self, key: str, parse: Parser[T], default: T) -> T:
        """The parsed value; the default when missing or null, or (after an error) invalid."""
        value = self.raw(key, _MISSING)
        if value is _MISSING or value is None or value is SKIP:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return default

    def optional(self, key: str, parse: Parser[T]) -> T | None:
        return self.get(key, parse, None)

    def required(self, key: str, parse: Parser[T]) -> T | None:
        """Like ``optional`` but a missing or null key is an error."""
        if self.raw(key) is None:
            self.error(key, "required")
            return None
        return self.get(key, parse, None)

    # typed conveniences
    def text(self, key: str, default: str = "", *, nonempty: bool = False) -> str:
        return self.get(key, as_str(nonempty=nonempty), default)

    def integer(
        self, key: str, default: int, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        return self.get(key, as_int(lo=lo, hi=hi), default)

    def number(
        self, key: str, default: float, *, lo: float | None = None, hi: float | None = None
    ) -> float:
        return self.get(key, as_float(lo=lo, hi=hi), default)

    def flag(self, key: str, default: bool) -> bool:
        return self.get(key, as_bool, default)

    def duration(
        self, key: str, default: float, *, positive: bool = True, hi: float | None = None
    ) -> float:
        return self.get(key, as_duration(positive=positive, hi=hi), default)

    def size(self, key: str, default: int, *, positive: bool = False) -> int:
        return self.get(key, as_size(positive=positive), default)

    def percent(self, key: str, default: float) -> float:
        return self.get(key, as_percent, default)

    def choice(self, key: str, default: S, choices: tuple[S, ...]) -> S:
        return self.get(key, as_choice(choices), default)

    def section(self, key: str) -> Fields:
        """A reader for a nested mapping (missing or null: empty)."""
        return Fields(self.raw(key), self.at(key), self.errors)

    def items(self, key: str) -> Iterator[tuple[str, object]]:
        """(path, value) for each element of a list (missing or null: none)."""
        return list_items(self.raw(key), self.at(key), self.errors)

    def entries(self, key: str) -> Iterator[tuple[str, str, object]]:
        """(name, path, value) for each entry of a string-keyed mapping."""
        value = self.raw(key)
        if value is None or value is SKIP:
            return
        if not isinstance(value, Mapping):
            self.error(key, f"expected a mapping, got {show(value)}")
            return
        for name, item in value.items():
            if not isinstance(name, str) or not name:
                self.error(key, f"keys must be non-empty strings, got {show(name)}")
                continue
            yield name, join(self.at(key), name), item

    def close(self) -> None:
        """Report every key that no getter asked for, suggesting the closest known one."""
        known = set(self._known)
        for key in self._data:
            if key in known:
                continue
            name = key if isinstance(key, str) else show(key)
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.errors.append(FieldError(join(self.path, name), f"unknown key{hint}"))
