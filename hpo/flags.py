"""Command-line parsing shared by ``hpo`` and ``hpo-worker``: value types that check their range
when parsed, and a parser whose errors are one line (argparse prints its usage block too)."""

from __future__ import annotations

import argparse
import re
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is exactly one line: ``<prog>: error: <flag> <value> is
    invalid; allowed: ...``, exit 2."""

    def error(self, message: str):
        message = message.replace("\n", "\\n")  # one line, whatever the user typed
        flag = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message)
        if flag:
            message = f"{flag.group(1)} {flag.group(2)}"
        self.exit(2, f"{self.prog.split()[0]}: error: {message}\n")  # "hpo", not "hpo export"

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            sys.stderr.write(message)
        sys.exit(status)


def _number(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; allowed: {name}") from None


def at_least(least: float, kind=int):
    """A value of ``kind`` that is ``least`` or more."""

    def parse(text: str):
        value = _number(kind, text)
        if not value >= least:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text!r} is invalid; allowed: {least:g} or more")
        return value

    parse.__name__ = f"{kind.__name__}>={least:g}"
    return parse


def between(low: float, high: float, kind=int, open_ends: bool = False):
    """A value of ``kind`` in [low, high] (or (low, high) with ``open_ends``)."""

    def parse(text: str):
        value = _number(kind, text)
        inside = low < value < high if open_ends else low <= value <= high
        if not inside:
            bounds = f"{low:g} < value < {high:g}" if open_ends else f"{low:g} to {high:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is invalid; allowed: {bounds}")
        return value

    parse.__name__ = f"{kind.__name__} in range"
    return parse


def one_of(*choices: str):
    def parse(text: str):
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is invalid; allowed: {', '.join(choices)}")
        return text

    parse.__name__ = "choice"
    return parse
