"""Field types that accept exactly what their JSON Schema type says.

Pydantic's lax mode turns ``"5"`` and ``true`` into the integer 5 and 1, and ``0`` into
``false``: friendly for settings read from the environment, wrong for an API whose document
says ``integer``, ``number`` and ``boolean``. A client sending ``"include_states": 0`` has a
bug and should hear about it. These types keep JSON's own equivalences only: an integer
may be written ``2.0`` (JSON Schema's ``integer`` is any number with no fractional part) and
an integer is a number.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, StrictBool, StrictStr

__all__ = ["Bool", "Date", "DateTime", "Float", "Int", "Str"]

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _json_integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be an integer (a JSON number)")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("Input should be an integer, without a fractional part")
        return int(value)
    return value


def _json_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a number")
    return value


Int = Annotated[int, BeforeValidator(_json_integer)]
"""An integer: a JSON number without a fractional part (``3`` or ``3.0``); not ``"3"``, not
``true``."""
Float = Annotated[float, BeforeValidator(_json_number)]
"""A number: not ``"1.5"``, not ``true``."""
Bool = StrictBool
"""``true`` or ``false``: not ``0``, ``1`` or ``"true"``."""
Str = StrictStr


def _iso_date(value: Any) -> Any:
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise ValueError("Input should be a date: YYYY-MM-DD")
    return value


def _iso_date_time(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise ValueError("Input should be an RFC 3339 date-time: YYYY-MM-DDTHH:MM:SSZ")
    return value


Date = Annotated[date, BeforeValidator(_iso_date)]
"""A calendar date written ``YYYY-MM-DD`` (pydantic alone also takes Unix timestamps)."""
DateTime = Annotated[datetime, BeforeValidator(_iso_date_time)]
"""An RFC 3339 date-time (``2026-12-03T18:00:00Z``); not a Unix timestamp."""
