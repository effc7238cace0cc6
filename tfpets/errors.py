"""Errors meant for the person running tfpets, printed by the launcher as one line."""


class UsageError(Exception):
  """A bad flag value, file or combination; the message names the file or flag and the problem."""
