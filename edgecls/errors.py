"""The one user-facing error type: the CLI prints `error: <message>` and exits 2."""


class UserError(Exception):
    """A problem with the user's input (path, flag, image, JSON): never a bug.

    The message must say what is wrong and how to fix it, on one line.
    """

    exit_code = 2
