"""The one exception users see: a mistake of theirs, reported as a single line."""


class HpoError(Exception):
    """A usage error: bad input, unknown name, unreachable resource.

    The CLI prints its message as one line and exits 1; a traceback only with ``--debug``.
    """
