"""A protocol file: a starting configuration and an ordered list of sweeps, each a small grid of
knobs (``hpo.studies.protocol_knobs``), read and checked whole before any run starts (the first
bad knob or value is named in one line). Shipped protocols live in ``protocols/``. No torch
here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from hpo.errors import HpoError
from hpo.studies import protocol_knobs
from hpo.training.config import from_dict, load_json
from search_spaces import DEFAULTS

SHIPPED = Path(__file__).parent / "protocols"
EPOCHS = 10  # per run, unless the file or --epochs says otherwise (the chain's default)
_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    knobs: dict[str, list[Any]]  # in the file's order; the runs are their product


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str  # the file's stem: the default name of its studies
    source: str
    start: dict[str, Any]
    sweeps: list[Sweep]
    epochs: int

    def record(self) -> dict[str, Any]:
        return {"start": self.start, "epochs": self.epochs,
                "sweeps": [{"name": s.name, "knobs": s.knobs} for s in self.sweeps]}


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.json"))


def load(spec: str) -> Protocol:
    """A protocol from a JSON file, or one shipped with hpo by name (``reports``); every knob
    and value is checked now, and the first bad one is named in a one-line HpoError."""
    path = Path(spec)
    if not path.exists() and _NAME.fullmatch(spec) and (SHIPPED / f"{spec}.json").exists():
        path = SHIPPED / f"{spec}.json"
    elif not path.exists():
        raise HpoError(f"--protocol {spec!r}: no such file; shipped protocols: "
                       f"{', '.join(shipped())}")
    return parse(load_json(path), str(path))


def parse(doc: Any, source: str) -> Protocol:
    def bad(where: str, what: str) -> HpoError:
        return HpoError(f"protocol {source}: {where}{what}")

    if not isinstance(doc, dict) or not isinstance(doc.get("sweeps"), list) or not doc["sweeps"]:
        raise bad("", "expected an object with a non-empty list \"sweeps\"")
    unknown = sorted(set(doc) - {"description", "start", "epochs", "sweeps"})
    if unknown:
        raise bad("", f"unknown key {unknown[0]!r}; allowed: description, start, epochs, sweeps")
    epochs = doc.get("epochs", EPOCHS)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise bad("", f"epochs {epochs!r} is invalid; allowed: an integer >= 1")
    start_fields = doc.get("start", {})
    if not isinstance(start_fields, dict):
        raise bad("", "\"start\" must be an object of config fields")
    try:
        start = from_dict({**DEFAULTS, **start_fields, "epochs": epochs}).to_dict()
    except HpoError as e:
        raise bad("start: ", str(e)) from None
    sweeps, names = [], set()
    for i, entry in enumerate(doc["sweeps"], 1):
        if not isinstance(entry, dict) or set(entry) - {"name", "knobs"}:
            raise bad(f"sweep {i}: ", "expected an object with \"name\" and \"knobs\"")
        name, knobs = entry.get("name"), entry.get("knobs")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in names:
            raise bad(f"sweep {i}: ", f"name {name!r} is invalid; allowed: a new name of "
                                      "letters, digits, '_' and '-'")
        names.add(name)
        where = f"sweep {i} ({name}): "
        if not isinstance(knobs, dict) or not knobs:
            raise bad(where, "\"knobs\" must be an object of knob: [values]")
        for knob, values in knobs.items():
            if not isinstance(values, list) or not values:
                raise bad(where, f"knob {knob!r} needs a non-empty list of values")
            for value in values:
                try:
                    from_dict(protocol_knobs.apply(start, knob, value))
                except HpoError as e:
                    raise bad(where, str(e) if knob in str(e) else f"knob {knob!r} value "
                                                                   f"{value!r}: {e}") from None
        sweeps.append(Sweep(name, dict(knobs)))
    return Protocol(Path(source).stem, source, start, sweeps, epochs)


