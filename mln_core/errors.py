"""Errors and problems: every one names where it comes from (file:line:col or an object)."""
from __future__ import annotations

from dataclasses import dataclass


class Pos:
    """A position in a project file (1-based line and column); immutable. (A plain class:
    a frozen dataclass costs more at start-up than all of this module's other code.)"""

    __slots__ = ("file", "line", "col")

    def __init__(self, file: str, line: int, col: int):
        object.__setattr__(self, "file", file)
        object.__setattr__(self, "line", line)
        object.__setattr__(self, "col", col)

    def __setattr__(self, name, value):
        raise AttributeError(f"Pos is immutable ({name})")

    def __eq__(self, other):
        return isinstance(other, Pos) and (self.file, self.line, self.col) == (other.file, other.line, other.col)

    def __hash__(self):
        return hash((self.file, self.line, self.col))

    def __repr__(self) -> str:
        return f"Pos(file={self.file!r}, line={self.line}, col={self.col})"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class MlnError(Exception):
    """A user-facing error. ``where`` is a Pos or the name of an object (host, switch...)."""

    exit_code = 1

    def __init__(self, message: str, where: Pos | str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


@dataclass(frozen=True, slots=True)
class Problem:
    """A finding of ``mln check``: severity is "error", "warning" or "info" (a fact worth
    knowing, such as a default chosen from the machine; printed by ``check`` only, not counted)."""

    severity: str
    message: str
    where: Pos | str | None = None

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.severity}: {self.message}"


class Problems:
    """Collects warnings and errors while reading a project; raises on demand."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def warn(self, message: str, where: Pos | str | None = None) -> None:
        self.items.append(Problem("warning", message, where))

    def error(self, message: str, where: Pos | str | None = None) -> None:
        self.items.append(Problem("error", message, where))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    def raise_first_error(self) -> None:
        for p in self.items:
            if p.severity == "error":
                raise MlnError(p.message, p.where)
