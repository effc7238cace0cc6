"""Errors meant for the person running tfpets, printed by the launcher as one line."""

from __future__ import annotations

from typing import Any


class UsageError(Exception):
  """A bad flag value, file or combination; the message names the file or flag and the problem."""


class ArgumentError(UsageError, ValueError):
  """A library function's argument is bad: `argument` names it, `problem` says what is wrong.

  Library code speaks in its own arguments; a stage maps them to its flags (`ARGUMENT_FLAGS`), and the
  launcher then words the message with the flag's name.
  """

  def __init__(self, argument: str, value: Any, problem: str):
    self.argument, self.value, self.problem = argument, value, problem
    super().__init__(f"{argument}={value!r}: {problem}")

  def as_flag(self, flag_name: str) -> UsageError:
    return UsageError(f"--{flag_name}={self.value}: {self.problem}")
