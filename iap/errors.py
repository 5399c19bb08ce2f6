"""Errors a user can cause. The CLI prints their message alone, without a traceback."""


class IapError(Exception):
    """A problem with the user's input (a path, a config field, a model): the message says what and where."""


class StorageError(Exception):
    """The storage behind a URL failed under a write (a full disk, a quota, a read-only or vanished bucket):
    not the user's input, so a task may retry it; the CLI prints it as one message naming the URL. Nothing
    partial is visible at the URL (iap.system.storage)."""
