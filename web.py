"""The web page at ``/``: browse by folder, search, set, edit and delete variables in a browser.

The listing is one folder level at a time (``/`` separates the folders of ``app/prod/db``), with
a breadcrumb; "Names starting with" searches within it (a prefix such as ``app/prod/d``).

Server-rendered Jinja2 with plain HTML forms, so everything works with JavaScript off; the one
script (``static/web.js``) only adds a confirm() before a delete. Every write the page makes is
conditional: a new variable is created only if the name is free, an edit or delete applies only
to the version the user saw. When someone else got there first, the user sees both values
(409) instead of having theirs silently overwritten or lost.

Names travel in query strings and form fields, never in the path: a browser rewrites ``.`` and
``..`` path segments, and a name such as ``a/../b`` must still reach its own page. The rules
for what a form may carry (strict decoding, names, sizes, versions) are the API's, from
``inputs``; a broken rule is shown on a page instead of as the API's one-line error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for

import access
import db
import inputs
import signin
from errors import ApiError

bp = Blueprint("web", __name__)

# What the page needs and nothing more: our stylesheet, our one script, forms posting back to us.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# A page shows previews (the first PREVIEW_CHARS characters, all the database sends).
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
PREVIEW_CHARS = 160
PREVIEW_LINES = 3
HISTORY_ROWS = 20  # the newest changes a variable's page shows
FOLDER_DELIMITER = "/"
BAD_FORM = "the form did not arrive as URL-encoded UTF-8; please try again"


@bp.after_request
def page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    # Names are in the page URLs; do not hand them to whatever site a user goes to next.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


# Sign-in and sign-out (signin.py) are pages too. Every form post is checked first (origin and
# CSRF token, in every mode), and a refusal is shown as a page: the sign-in form for a 401.
signin.bp.after_request(page_headers)
bp.before_request(signin.check_form_post)
for _blueprint in (bp, signin.bp):
    _blueprint.register_error_handler(ApiError, signin.page_error)


# --- Template helpers


@bp.app_context_processor
def limits() -> dict[str, Any]:
    return {"max_name_chars": db.MAX_NAME_CHARS}


# Globals, not context: the macros (imported without context) need them too. Write controls are
# shown only where the caller's token may write; links into the API (which takes no cookie) only
# without access control.
@bp.app_template_global()
def may_write(name: str) -> bool:
    return access.may(name, "write")


bp.app_template_global("may_write_somewhere")(access.may_write_somewhere)
bp.app_template_global("access_on")(access.enabled)


@bp.app_template_filter("preview")
def preview(value: str) -> str:
    """The first few lines of ``value``, cut at PREVIEW_CHARS, for the listing only."""
    short = "\n".join(value.split("\n")[:PREVIEW_LINES])[:PREVIEW_CHARS]
    return short + "…" if short != value else short


@bp.app_template_filter("when")
def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@bp.app_template_filter("isotime")
def isotime(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# --- Helpers


def _page(template: str, status: int = 200, /, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status


def _error(status: int, message: str) -> tuple[str, int]:
    return _page("error.html", status, status=status, message=message)


def _form() -> dict[str, str] | None:
    """The urlencoded form, decoded as strictly as the API's forms (``inputs.form_fields``);
    None if it is another type or malformed."""
    if request.mimetype != inputs.FORM:
        return None
    try:
        return inputs.form_fields(request.get_data(cache=False))
    except ApiError:
        return None


def _line_ending(value: str) -> str | None:
    """``"lf"`` or ``"crlf"`` if a browser form can give ``value`` back unchanged, else None.

    A browser submits every line break of a textarea as CRLF and turns NUL into U+FFFD, so only
    values free of NUL whose line breaks are all LF or all CRLF survive an edit round trip.
    """
    if "\0" in value:
        return None
    if "\r" not in value:
        return "lf"
    bare = value.replace("\r\n", "")
    return "crlf" if "\r" not in bare and "\n" not in bare else None


def _from_textarea(value: str, newline: str) -> str:
    """Undo the browser's CRLF line breaks, back to the style the value had (LF if new)."""
    value = value.replace("\r\n", "\n")
    return value.replace("\n", "\r\n") if newline == "crlf" else value


def _conditions(version: int | None) -> inputs.Conditions:
    """Apply only to the version the page showed; None (nothing shown): only if still absent."""
    if version is None:
        return inputs.Conditions(if_absent=True)
    return inputs.Conditions(if_version=version)


# --- Pages


def breadcrumb(prefix: str) -> list[tuple[str, str]]:
    """The folders ``prefix`` is in, outermost first, as (label, folder):
    ``app/prod/d`` is in ``("app", "app/")`` and ``("prod", "app/prod/")``."""
    folders = prefix.split(FOLDER_DELIMITER)[:-1]
    return [
        (label, FOLDER_DELIMITER.join(folders[: depth + 1]) + FOLDER_DELIMITER)
        for depth, label in enumerate(folders)
    ]


@bp.get("/")
def index() -> tuple[str, int]:
    prefix = request.args.get("prefix", "")
    after = request.args.get("after") or None
    try:
        limit = inputs.list_limit(PAGE_SIZE, MAX_PAGE_SIZE)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    # The variables and sub-folders directly in the folder, names starting with ``prefix``;
    # one entry more than a page tells whether there is a next page.
    store = db.ready_store()
    entries = store.list_folder(
        prefix, FOLDER_DELIMITER, after, limit + 1, True, value_chars=PREVIEW_CHARS + 1
    )
    next_url = None
    if len(entries) > limit:
        entries = entries[:limit]
        last = entries[-1]
        next_url = url_for(
            "web.index",
            prefix=prefix or None,
            after=last if isinstance(last, str) else last.name,
            limit=limit if limit != PAGE_SIZE else None,
        )
    entries = access.visible(entries)  # after the cut: the next page goes on from the last read
    return _page(
        "index.html",
        entries=entries,
        breadcrumb=breadcrumb(prefix),
        prefix=prefix,
        after=after,
        limit=limit if limit != PAGE_SIZE else None,
        next_url=next_url,
        deleted=request.args.get("deleted"),
        new_name=request.args.get("new", ""),
    )


@bp.get("/view")
def view() -> tuple[str, int]:
    name = request.args.get("name", "")
    access.require(name, "read")
    store = db.ready_store()
    var = store.get(name)
    history = store.numbered_history(name, None, HISTORY_ROWS, True) if name else []
    if var is None:
        return _page("missing.html", 404, name=name, history=history)
    saved = inputs.whole_number(request.args.get("saved", ""))
    return _page("view.html", var=var, history=history, saved=saved)


@bp.get("/edit")
def edit() -> tuple[str, int]:
    name = request.args.get("name", "")
    access.require(name, "write")
    var = db.ready_store().get(name)
    if var is None:
        return _page("missing.html", 404, name=name)
    return _page(
        "edit.html",
        name=var.name,
        value=var.value,
        version=var.version,
        line_ending=_line_ending(var.value or ""),
        var=var,
    )


@bp.post("/save")
def save() -> Response | tuple[str, int]:
    form = _form()
    if form is None:
        return _error(400, BAD_FORM)
    name = form.get("name", "")
    access.require(name, "write")
    value = form.get("value")
    try:
        version = inputs.form_version(form.get("version", ""))
    except ApiError:
        version, value = None, None
    if value is None:
        return _error(400, "the form is missing its value or has an invalid version")
    value = _from_textarea(value, form.get("newline", "lf"))
    try:
        inputs.check_name(name)
        inputs.check_value_size(value, current_app.config["MAX_VALUE_BYTES"])
    except ApiError as refused:
        return _page(
            "edit.html",
            refused.status,
            name=name,
            value=value,
            version=version,
            line_ending=_line_ending(value),
            problem=refused.message,
        )
    store = db.ready_store()
    conditions = _conditions(version).as_kwargs()
    try:
        result = store.put(name, value, actor=g.get("actor"), **conditions)
    except db.PreconditionFailed:
        return _page(
            "conflict.html",
            409,
            name=name,
            value=value,
            version=version,
            line_ending=_line_ending(value),
            current=store.get(name),
        )
    return redirect(url_for("web.view", name=name, saved=result.version), 303)


@bp.post("/delete")
def delete() -> Response | tuple[str, int]:
    form = _form()
    if form is None:
        return _error(400, BAD_FORM)
    name = form.get("name", "")
    access.require(name, "write")
    store = db.ready_store()
    if form.get("confirmed") != "yes":
        # Without JavaScript there was no confirm(): ask here, about the value as it is now.
        var = store.get(name)
        if var is None:
            return _page("missing.html", 404, name=name)
        return _page("delete.html", var=var)
    try:
        version = inputs.form_version(form.get("version", ""))
    except ApiError:
        version = None
    if version is None:
        return _error(400, "the form is missing the version to delete")
    try:
        store.delete(name, if_version=version, actor=g.get("actor"))
    except db.PreconditionFailed:
        current = store.get(name)
        if current is None:
            return _page("missing.html", 409, name=name, gone=True)
        return _page("delete.html", 409, var=current, changed_from=version)
    return redirect(url_for("web.index", deleted=name), 303)


@bp.post("/restore")
def restore() -> Response | tuple[str, int]:
    """Write an old version's value as a new version, if the variable is still at the version
    the page showed (or still absent, for a deleted one)."""
    form = _form()
    if form is None:
        return _error(400, BAD_FORM)
    name = form.get("name", "")
    access.require(name, "write")
    try:
        wanted = inputs.form_version(form.get("restore", ""))
        version = inputs.form_version(form.get("version", ""))
    except ApiError:
        return _error(400, "the form has an invalid version")
    store = db.ready_store()
    not_retained = f"version {wanted} of {name!r} is not in the retained history"
    if wanted is None:
        return _error(404, not_retained)
    conditions = _conditions(version).as_kwargs()
    try:
        result = store.restore(name, wanted, actor=g.get("actor"), **conditions)
    except db.VersionNotFound:
        return _error(404, not_retained)
    except db.PreconditionFailed:
        return _error(
            409, f"{name!r} changed since the page was loaded: nothing restored, look again"
        )
    return redirect(url_for("web.view", name=name, saved=result.version), 303)
