"""Storage URLs: which one to use, checking it, and showing it without its password.

``--storage`` wins, then ``HPO_STORAGE``, then an embedded SQLite file ``hpo.db`` in the working
directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy

from hpo.errors import HpoError

DEFAULT_STORAGE = "sqlite:///hpo.db"
SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2")


def resolve_url(flag: str | None) -> str:
    return flag or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def mask(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and errors."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def parse_url(url: str) -> sqlalchemy.engine.URL:
    if "://" not in url:
        hint = f"sqlite:///{url}" if url.endswith(".db") else "postgresql+psycopg2://user:pass@host/db"
        raise HpoError(f"storage {url!r} is not a URL; pass e.g. {hint}")
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise HpoError(f"storage URL {mask(url)!r} is malformed; expected e.g. "
                       "postgresql+psycopg2://user:pass@host:5432/db or sqlite:///hpo.db") from None
    if parsed.drivername not in SCHEMES:
        raise HpoError(f"storage scheme {parsed.drivername!r} is not supported; use one of "
                       f"{', '.join(SCHEMES)}")
    return parsed


def sqlite_file(url: str) -> Path | None:
    """The file of an embedded database URL; None for a server or an in-memory database."""
    parsed = parse_url(url)
    if parsed.drivername == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None
