"""What a client may send, and the one place that reads it: query strings, bodies, forms,
precondition headers. The API and the web page both parse through here.

Each request is parsed once into a plain dataclass, every parameter checked, before anything
touches the database: an invalid parameter is a 400 even where the request would not use it.
Every problem is an ``ApiError`` with its status and stable code; the API answers it as it is,
the web page shows its message on a page.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

from flask import request

import db
import exports
from errors import ApiError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BATCH = 1000  # names in one batch read
MAX_TXN_OPERATIONS = 1000  # operations in one POST /txn; more is a 413
# DELETE /var?prefix= and the env/shell exports act on at most this many variables at once:
# beyond it nothing is deleted or written (409), and the client narrows the prefix.
MAX_SUBTREE_VARIABLES = 10_000
MAX_TTL_SECONDS = 999_999_999  # nine digits: about 31 years
MAX_WAIT_SECONDS = 60  # a long-poll's wait; longer is a 400
# A version fits the databases' 64-bit integers: a longer number cannot be one we issued.
MAX_VERSION_DIGITS = 18

FORM = "application/x-www-form-urlencoded"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_VERSION_TEXT = re.compile(r"[1-9][0-9]{0,17}")
_TTL_TEXT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")


# --- Text and numbers


def _decode_utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_utf8", f"the {what} is not valid UTF-8") from exc


def _is_number(raw: str, max_digits: int) -> bool:
    """``raw`` is ASCII digits only (``int()`` rejects "²", which ``isdigit()`` accepts), and at
    most ``max_digits`` of them (``int()`` of a huge string is slow, then an error)."""
    return raw.isascii() and raw.isdigit() and len(raw) <= max_digits


def form_version(raw: str) -> int | None:
    """The version a page's form was loaded at; None (an empty field) means "none yet"."""
    if raw == "":
        return None
    if not _is_number(raw, MAX_VERSION_DIGITS):
        # The page's forms catch this and show their own message: nobody sees its content.
        raise ApiError(400, "invalid_parameter", f"invalid version {raw!r}")  # pragma: no mutate
    return int(raw)


def whole_number(raw: str) -> int | None:
    """The number ``raw`` spells in ASCII digits, or None."""
    return int(raw) if _is_number(raw, MAX_VERSION_DIGITS) else None


def check_raw_path(environ: Mapping[str, Any]) -> None:
    """400 unless the path, as the client sent it, is valid UTF-8 and the path and the query
    string have no malformed percent-escape.

    Werkzeug turns invalid UTF-8 in the path into U+FFFD and keeps a ``%`` that starts no
    escape (``/var/100%``, ``pct%zz``) as a literal, either of which would make a different
    name out of it: the path is checked as the client sent it (gunicorn's RAW_URI), as a form
    body is (``form_fields``).
    """
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw_uri is not None and raw_uri.isascii() and "%" not in raw_uri:
        return  # nothing escaped, nothing but ASCII: valid as it stands (most requests)
    if raw_uri is None:
        raw = environ.get("PATH_INFO", "").encode("latin-1", "replace")
    else:
        parts = urlsplit(raw_uri)
        for where, text in (("path", parts.path), ("query string", parts.query)):
            if _BAD_PERCENT.search(text):
                raise ApiError(
                    400,
                    "invalid_escape",
                    f"malformed percent-escape in the {where}: % must start an escape %XX "
                    "(send a literal % as %25)",
                )
        raw = unquote_to_bytes(parts.path)
    _decode_utf8(raw, "path")


# --- Names and values


def check_name(name: str) -> str:
    problem = db.name_problem(name)
    if problem:
        code = "name_too_long" if len(name) > db.MAX_NAME_CHARS else "invalid_name"
        raise ApiError(400, code, problem)
    return name


def check_value_size(value: str, max_bytes: int) -> str:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ApiError(400, "invalid_value", "the value is not valid Unicode text") from exc
    if size > max_bytes:
        raise ApiError(
            413, "value_too_large", f"the value is {size} bytes; the limit is {max_bytes}"
        )
    return value


def form_fields(body: bytes) -> dict[str, str]:
    """The first of each field of an urlencoded body, decoded strictly.

    Werkzeug's form parser keeps undecodable percent-escapes as literal text; a value must never
    be silently altered, so the body is parsed here instead.
    """
    text = _decode_utf8(body, "form body")
    if _BAD_PERCENT.search(text):
        raise ApiError(400, "invalid_form", "malformed form encoding: % must start an escape %XX")
    try:
        fields = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_utf8", "a form field is not valid percent-encoded UTF-8"
        ) from exc
    first: dict[str, str] = {}
    for key, field in fields:
        first.setdefault(key, field)
    return first


# --- Reads


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """A read of one variable: the value now, its history, an old version, or a long-poll."""

    limit: int
    with_values: bool
    history: bool
    before: int | None  # history: changes older than this version
    version: int | None  # an old version's value
    wait: float | None  # a long-poll: seconds to wait for a change
    # A long-poll answers once the variable is past this version: ``after_version``, else the
    # one ETag of If-None-Match; None: the version it is at now.
    wait_after: int | None


# A read with no parameter: the value now (If-None-Match alone makes no long-poll).
_PLAIN_READ = ReadQuery(DEFAULT_LIMIT, False, False, None, None, None, None)


def read_query() -> ReadQuery:
    args = request.args
    if not args:
        return _PLAIN_READ  # most reads: no parameter to check
    limit = list_limit()
    with_values = _flag("values")
    before = _version_param("before") if "before" in args else None
    version = _version_param("version") if "version" in args else None
    wait = _wait_param() if "wait" in args else None
    wait_after = _number_param("after_version", minimum=0) if "after_version" in args else None
    if wait_after is None and request.if_none_match and len(request.if_none_match.as_set()) == 1:
        wait_after = _version_of(f'"{next(iter(request.if_none_match.as_set()))}"')
    return ReadQuery(limit, with_values, "history" in args, before, version, wait, wait_after)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A batch read (``names``); else an export of everything under ``prefix`` (in
    ``export_format``); else a page of ``limit`` names under ``prefix`` after ``after``: all of
    them, or with a ``delimiter`` one level (the variables and sub-prefixes just under it)."""

    limit: int
    with_values: bool
    names: list[str]
    prefix: str
    after: str | None
    delimiter: str | None = None
    export_format: str | None = None


def list_query() -> ListQuery:
    args = request.args
    limit = list_limit()
    with_values = _flag("values")
    names = args.getlist("name")
    if len(names) > MAX_BATCH:
        raise ApiError(400, "too_many_names", f"ask for at most {MAX_BATCH} names at once")
    for name in names:
        check_name(name)
    delimiter = _delimiter(args["delimiter"]) if "delimiter" in args else None
    export_format = args.get("format")
    if export_format is not None and export_format not in exports.FORMATS:
        raise ApiError(400, "invalid_parameter", "format must be env or shell")
    prefix, after = args.get("prefix", ""), args.get("after")
    return ListQuery(limit, with_values, names, prefix, after, delimiter, export_format)


def subtree_prefix() -> str:
    """``DELETE /var``: the prefix under which to delete every variable. The listing's
    parameters are checked as on GET; "" (every variable) only with ``all=true``."""
    query = list_query()
    everything = _flag("all")
    if "prefix" not in request.args:
        raise ApiError(
            400, "prefix_required", "say what to delete: DELETE /var?prefix=<names starting with>"
        )
    if query.prefix == "" and not everything:
        raise ApiError(
            400,
            "prefix_required",
            "an empty prefix would delete every variable: send ?prefix=&all=true to mean it",
        )
    return query.prefix


def _delimiter(raw: str) -> str:
    # The listing skips a sub-prefix by starting past delimiter + 1 (storage.queries.folder_skip):
    # the code point after the delimiter must exist and not be a surrogate.
    if (
        len(raw) != 1
        or ord(raw) < 0x20
        or 0x7F <= ord(raw) < 0xA0
        or ord(raw) + 1 in (0xD800, 0x110000)
    ):
        raise ApiError(
            400,
            "invalid_delimiter",
            "delimiter must be exactly one character, and not a control character "
            "(U+0000-U+001F, U+007F-U+009F), U+D7FF or U+10FFFF",
        )
    return raw


@dataclass(frozen=True, slots=True)
class EventsQuery:
    """An event stream: changes under ``prefix`` after the seq ``last_seq`` (None: from now)."""

    prefix: str
    last_seq: int | None


def events_query() -> EventsQuery:
    header = request.headers.get("Last-Event-ID")
    raw_last = header or request.args.get("after_seq")
    last = None
    if raw_last is not None:
        if not _is_number(raw_last, MAX_VERSION_DIGITS):
            sent = "Last-Event-ID" if header else "after_seq"  # name what the client sent
            raise ApiError(400, "invalid_parameter", f"{sent} must be an event's id")
        last = int(raw_last)
    return EventsQuery(request.args.get("prefix", ""), last)


def list_limit(default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """``limit``: a page of 1 to ``maximum`` items."""
    raw = request.args.get("limit", str(default))
    if not _is_number(raw, max_digits=9) or not 1 <= int(raw) <= maximum:
        raise ApiError(
            400, "invalid_parameter", f"limit must be a whole number from 1 to {maximum}"
        )
    return int(raw)


def _flag(name: str) -> bool:
    """``name``: true (``true``, ``1``, ``yes`` or empty, any case), false (``false``, ``0``,
    ``no``, or absent)."""
    raw = request.args.get(name, "false").lower()
    if raw in ("true", "1", "yes", ""):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ApiError(400, "invalid_parameter", f"{name} must be true or false")


def _version_param(name: str) -> int:
    raw = request.args[name]
    if not _is_number(raw, MAX_VERSION_DIGITS) or int(raw) < 1:
        raise ApiError(400, "invalid_parameter", f"{name} must be a version number (1 or more)")
    return int(raw)


def _number_param(name: str, minimum: int) -> int:
    raw = request.args[name]
    if not _is_number(raw, MAX_VERSION_DIGITS) or int(raw) < minimum:
        raise ApiError(400, "invalid_parameter", f"{name} must be a whole number >= {minimum}")
    return int(raw)


def _wait_param() -> float:
    """``wait``: seconds, ``30`` or ``30s``, from 0 to MAX_WAIT_SECONDS."""
    raw = request.args["wait"].removesuffix("s")
    if not _is_number(raw, max_digits=4) or int(raw) > MAX_WAIT_SECONDS:
        raise ApiError(
            400, "invalid_wait", f"wait must be whole seconds from 0 to {MAX_WAIT_SECONDS}"
        )
    return float(raw)


# --- Writes


@dataclass(frozen=True, slots=True)
class Conditions:
    """When a write applies: at ``if_version``, only if absent, or only if it exists."""

    if_version: int | None = None
    if_absent: bool = False
    if_exists: bool = False

    def as_kwargs(self) -> dict[str, Any]:
        """The conditions set, as keyword arguments for ``Store.put``/``restore``/``delete``."""
        if self.if_exists:
            return {"if_exists": True}
        if self.if_version is not None:
            return {"if_version": self.if_version}
        return {"if_absent": True} if self.if_absent else {}


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A PUT or POST: a value, or the version whose value to restore; its conditions; and the
    time to live in seconds (None: permanent)."""

    name: str
    conditions: Conditions
    value: str | None  # None when restoring
    restore: int | None  # the version whose value to write again
    ttl: float | None


def write_request(name: str, max_value_bytes: int) -> WriteRequest:
    """The name, then the precondition headers, then the body (the order of the 400s)."""
    check_name(name)
    conditions = _write_conditions()
    fields = _write_fields()
    ttl = _ttl(fields.get("ttl"))
    if "restore" in fields:
        if "value" in fields:
            raise ApiError(400, "invalid_restore", "send value or restore, not both")
        return WriteRequest(name, conditions, None, _restore_version(fields["restore"]), ttl)
    value = fields.get("value")
    if value is None:
        raise ApiError(400, "missing_value", "missing form field 'value'")
    return WriteRequest(name, conditions, check_value_size(value, max_value_bytes), None, ttl)


def delete_conditions(name: str) -> Conditions:
    """A DELETE's name and conditions (If-None-Match: * cannot apply to a delete)."""
    check_name(name)
    conditions = _write_conditions()
    if conditions.if_absent:
        raise ApiError(400, "invalid_precondition", "If-None-Match: * makes no sense on DELETE")
    return conditions


def _write_conditions() -> Conditions:
    """``If-Match`` (one ETag, or ``*``) / ``If-None-Match: *``."""
    if_match = _single_etag("If-Match")
    if_none_match = _single_etag("If-None-Match")
    if if_none_match not in (None, "*"):
        raise ApiError(400, "invalid_precondition", "on a write, If-None-Match supports only *")
    if if_match is not None and if_none_match is not None:
        raise ApiError(400, "invalid_precondition", "send If-Match or If-None-Match, not both")
    if if_match == "*":
        return Conditions(if_exists=True)
    if if_match is not None:
        return Conditions(if_version=_version_of(if_match))
    return Conditions(if_absent=if_none_match == "*")


def _single_etag(header_name: str) -> str | None:
    """The one ETag (or ``*``) of a precondition header, or None if absent."""
    raw = request.headers.get(header_name)
    if raw is None:
        return None
    raw = raw.strip()
    if raw == "*":
        return raw
    if "," in raw:
        raise ApiError(400, "invalid_precondition", f"{header_name} takes one ETag or *")
    return raw


def _version_of(etag: str) -> int:
    """The version an ETag of ours names; 0 (matches nothing) for anything else, W/ included."""
    digits = etag[1:-1]
    if len(etag) >= 3 and etag[0] == etag[-1] == '"' and _is_number(digits, MAX_VERSION_DIGITS):
        return int(digits)
    return 0


def _write_fields() -> dict[str, Any]:
    """A write's body as fields: form fields or JSON members ``value`` (or ``restore``) and
    ``ttl``, or a text/plain body as ``value``."""
    mimetype = request.mimetype
    if mimetype == FORM:
        return form_fields(request.get_data(cache=False))
    if mimetype == "multipart/form-data":
        return {k: request.form[k] for k in ("value", "restore", "ttl") if k in request.form}
    if mimetype == "application/json":
        return _json_fields(request.get_data(cache=False))
    if mimetype == "text/plain":
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8", "us-ascii"):
            raise ApiError(415, "unsupported_charset", "a text/plain body must be UTF-8")
        return {"value": _decode_utf8(request.get_data(cache=False), "body")}
    if not mimetype and not request.content_length and not request.get_data(cache=False):
        return {}
    raise ApiError(
        415,
        "unsupported_media_type",
        'send the value as form field "value", as JSON {"value": ...} or as a text/plain body',
    )


def json_body(body: bytes) -> Any:
    try:
        return json.loads(_decode_utf8(body, "JSON body"))
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "invalid_json", f"malformed JSON: {exc.msg} at position {exc.pos}"
        ) from exc


def _json_fields(body: bytes) -> dict[str, Any]:
    payload = json_body(body)
    if not isinstance(payload, dict) or ("value" not in payload and "restore" not in payload):
        raise ApiError(
            400, "missing_value", 'the JSON body must be an object like {"value": "..."}'
        )
    if "ttl" in payload and payload["ttl"] is None:
        raise ApiError(400, "invalid_ttl", "the JSON field ttl must be a number of seconds")
    if "value" in payload and not isinstance(payload["value"], str):
        raise ApiError(400, "invalid_value", "the JSON field value must be a string")
    return payload


def _restore_version(raw: Any) -> int:
    if isinstance(raw, float) and raw.is_integer():  # JSON's 3.0 is the integer 3
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not _VERSION_TEXT.fullmatch(raw):
        raise ApiError(400, "invalid_restore", "restore must be a version number (1 or more)")
    return int(raw)


def _ttl(in_body: Any) -> float | None:
    """A write's time to live: ``ttl`` in the body, else in the query string; seconds from 0
    (expired at once) to MAX_TTL_SECONDS, up to 6 decimals. None: permanent."""
    # No query string, no parse (and no KeyError made and caught inside MultiDict.get).
    in_query = request.args.get("ttl") if request.environ.get("QUERY_STRING") else None
    if in_query is not None and not _TTL_TEXT.fullmatch(in_query):
        in_body = "invalid"  # checked even where the body's ttl wins
    raw = in_body if in_body is not None else in_query
    if raw is None:
        return None
    if isinstance(raw, str) and _TTL_TEXT.fullmatch(raw):
        return float(raw)
    return ttl_seconds(raw)


def ttl_seconds(raw: Any) -> float:
    """A JSON number of seconds from 0 to MAX_TTL_SECONDS."""
    numeric = isinstance(raw, int | float) and not isinstance(raw, bool)
    if numeric and math.isfinite(raw) and 0 <= raw <= MAX_TTL_SECONDS:
        return float(raw)
    raise ApiError(
        400,
        "invalid_ttl",
        f"ttl must be a number of seconds from 0 to {MAX_TTL_SECONDS}, with at most 6 decimals "
        "(such as 30 or 0.25)",
    )
