"""Errors a user can cause. The CLI prints their message alone, without a traceback."""


class IapError(Exception):
    """A problem with the user's input (a path, a config field, a model): the message says what and where."""
