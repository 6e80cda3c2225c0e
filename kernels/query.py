"""DICOMweb query values for archives that do not percent-decode them.

Orthanc's DICOMweb plugin 1.7 matches ``PatientName=Demo%5EHead`` literally,
and HTTP clients percent-encode ``^`` and spaces whatever the caller does. So
a value is sent with only safe characters (DICOM's wildcards ``*`` ``?`` and
the list separator ``,`` among them); any other character becomes the
single-character wildcard ``?`` and results are then matched exactly here.
Both the kernel's client and the data service's gateway use this.
"""

from __future__ import annotations

import re
import string
from urllib.parse import quote, unquote_plus

# Characters a query value may carry unescaped: DICOM's wildcards (* ?) and
# list separator (,) among them. Some archives do not percent-decode queries
# (Orthanc's plugin 1.7), so anything else in a value is sent as the
# single-character wildcard and the results are filtered here exactly.
_SAFE_IN_QUERY = frozenset(string.ascii_letters + string.digits + "-._~*?,:")

def plain_query(query: str) -> str:
    """Re-encode a query so that DICOM's wildcards and separators reach the
    archive as they are."""
    out = []
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        out.append(key + sep + quote(unquote_plus(value), safe="".join(_SAFE_IN_QUERY)))
    return "&".join(out)


def archive_filters(filters: dict | None) -> tuple[dict | None, list[tuple[str, str]]]:
    """Filters the archive can take, and the exact matches to check afterwards."""
    if not filters:
        return filters, []
    out, exact = {}, []
    for key, value in filters.items():
        if isinstance(value, str) and any(ch not in _SAFE_IN_QUERY for ch in value):
            out[key] = "".join(ch if ch in _SAFE_IN_QUERY else "?" for ch in value)
            exact.append((key, value))
        else:
            out[key] = value
    return out, exact


def tag_of(key: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(key)
    return f"{tag:08X}" if tag is not None else key.upper()


def keep(record: dict, exact: list[tuple[str, str]]) -> bool:
    """True when ``record`` matches every pattern in ``exact`` (DICOM
    wildcard matching; person names case-insensitively, as archives do)."""
    for key, pattern in exact:
        element = record.get(tag_of(key))
        if element is None:
            continue  # the archive did not return the attribute: trust it
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        flags = re.S | (re.I if element.get("vr") == "PN" else 0)
        values = [v.get("Alphabetic", "") if isinstance(v, dict) else str(v)
                  for v in element.get("Value", [])] or [""]
        if not any(re.fullmatch(regex, v, flags) for v in values):
            return False
    return True




def first_value(record: dict, tag: str):
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON record, or None."""
    v = record.get(tag, {}).get("Value")
    return v[0] if v else None
