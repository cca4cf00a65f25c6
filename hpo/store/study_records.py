"""A study's own records: its settings, the configuration it froze, a chain's definition.

`optuna studies` prints every study user attribute whole, so these bulky records are study
system attributes (the storage's public ``set_study_system_attr``/``get_study_system_attrs``),
under ``hpo:<name>``. The user attributes keep what a person reads in that table: the stage,
what it froze and from where, its description, its objectives. Studies written by earlier
versions of hpo kept the records as user attributes; they are still read from there.
"""

from __future__ import annotations

from typing import Any

RECORDS = ("settings", "frozen_config", "chain", "protocol")
PREFIX = "hpo:"


def write(storage, study_name: str, name: str, value: Any) -> None:
    assert name in RECORDS, name
    storage.set_study_system_attr(storage.get_study_id_from_name(study_name), PREFIX + name, value)


def read(storage, study_name: str) -> dict[str, Any]:
    """The study's user attributes with its records added (records win over older copies)."""
    study_id = storage.get_study_id_from_name(study_name)
    return merged(storage.get_study_user_attrs(study_id), storage.get_study_system_attrs(study_id))


def read_one(storage, study_name: str, name: str) -> Any:
    """One record (None if absent): one read of the system attributes, one of the user ones
    only for a study from an earlier version."""
    study_id = storage.get_study_id_from_name(study_name)
    value = storage.get_study_system_attrs(study_id).get(PREFIX + name)
    return value if value is not None else storage.get_study_user_attrs(study_id).get(name)


def of(frozen_study) -> dict[str, Any]:
    """The same for a study listed by ``storage.get_all_studies()`` (no further reads)."""
    return merged(frozen_study.user_attrs, frozen_study.system_attrs)


def merged(user_attrs: dict[str, Any], system_attrs: dict[str, Any]) -> dict[str, Any]:
    return {**user_attrs, **{k[len(PREFIX):]: v for k, v in system_attrs.items()
                             if k.startswith(PREFIX)}}
