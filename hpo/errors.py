"""The exceptions users see, each reported as a single line (a traceback only with ``--debug``).

``HpoError`` is a mistake in what was asked (a bad value, an unknown name, a contradiction with
a stored study): exit 2, argparse's convention for usage errors. ``HpoFailure`` is something that
went wrong while doing it (a database that went away or refused, unreadable data): exit 1.
"""


class HpoError(Exception):
    exit_code = 2


class HpoFailure(HpoError):
    exit_code = 1
