"""The page's sessions and forms: sign-in and sign-out, the session cookie, CSRF protection.

**Sessions** (access control on): ``POST /signin`` with a valid token starts a session, Flask's
signed cookie (itsdangerous, keyed by ``SECRET_KEY``): HttpOnly, SameSite=Strict, Secure when
the request came over HTTPS (behind a proxy gunicorn trusts: ``FORWARDED_ALLOW_IPS``), valid
for ``SESSION_LIFETIME`` seconds from sign-in. It holds no token, only an HMAC of the token's
digest (so a policy change that removes the token ends its sessions) and the session's CSRF
token. The cookie authenticates the page's routes only (``access.py``); the API stays Bearer.
Failed sign-ins are slowed (each answer waits, and a client gets at most
``SIGNIN_MAX_FAILURES`` a minute per worker, then 429) and logged without the token.

**Forms** (every mode, access control off included): a POST to the page's own forms is refused
(403, nothing changes) when ``Sec-Fetch-Site`` says it came from elsewhere than our own origin
or ``Origin`` names another one, and unless it carries the CSRF token: the session's, or with
no session (access off, or a Bearer client) the one of the ``vk_csrf`` cookie (double submit),
so that forms keep working across workers, instances and restarts without a shared key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
)
from flask import session as flask_session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

import inputs
import policy
from errors import ApiError

log = logging.getLogger("var_keeper.signin")

bp = Blueprint("signin", __name__)
PUBLIC_ENDPOINTS = {"signin.signin_form", "signin.signin"}
CSRF_FIELD = "csrf"
CSRF_COOKIE = "vk_csrf"
SESSION_COOKIE = "vk_session"
# Where gunicorn.conf.py puts the key it made for its workers when none is configured.
GENERATED_SECRET_KEY = "VAR_KEEPER_GENERATED_SECRET_KEY"  # noqa: S105 - a variable name
FAILED_SIGNIN_DELAY = 0.5  # seconds every failed sign-in waits before its answer
FAILURE_WINDOW = 60.0  # seconds over which SIGNIN_MAX_FAILURES counts
MAX_CLIENTS_TRACKED = 10_000  # clients with recent failures remembered (oldest forgotten)


class _Cookie(SecureCookieSessionInterface):
    """Flask's signed session cookie, marked Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or bool(app.config["SESSION_COOKIE_SECURE"])

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # Most requests (the API's) carry no session: nothing to verify, so no signing
        # serializer is built for them (it showed in every request's profile), and without a
        # Cookie header no cookie is parsed either.
        if (
            "HTTP_COOKIE" not in request.environ
            or app.config["SESSION_COOKIE_NAME"] not in request.cookies
        ):
            return self.session_class()
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    """Sessions, CSRF tokens for the forms, and the secret key (made if none is configured)."""
    config = app.config
    access_on = config["READ_TOKENS"] or config["WRITE_TOKENS"] or config["ACCESS_POLICY_FILE"]
    key = config.get("SECRET_KEY")
    made = not key or key == os.environ.get(GENERATED_SECRET_KEY)
    if not key:
        config["SECRET_KEY"] = secrets.token_hex(32)
    if access_on and made and not config.get("TESTING"):
        log.warning(
            "SECRET_KEY is not set: the page's sessions are signed with a key made at start-up, "
            "so they end when the server restarts and do not reach other instances; set "
            "SECRET_KEY or SECRET_KEY_FILE, the same for every instance"
        )
    app.session_interface = _Cookie()
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        # The lifetime counts from sign-in: the cookie is not renewed on each request.
        SESSION_REFRESH_EACH_REQUEST=False,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=app.config["SESSION_LIFETIME"]),
    )
    app.extensions["var_keeper.signin"] = FailureLimiter(app.config["SIGNIN_MAX_FAILURES"])
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.after_request(_set_csrf_cookie)


# --- Sessions


def _session_ref(token: policy.Token) -> str:
    """What the cookie holds of a token: useless without the secret key, even offline."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, token.digest, hashlib.sha256).hexdigest()


def session_token(current: policy.Policy) -> policy.Token | None:
    """The token whose session this request carries, if it is valid and still in the policy."""
    ref = flask_session.get("ref")
    if not isinstance(ref, str) or not isinstance(flask_session.get("csrf"), str):
        return None
    found = None
    for token in current.tokens:
        if hmac.compare_digest(_session_ref(token), ref):
            found = token
    if found is not None:
        g.signed_in = True
    return found


@bp.get("/signin")
def signin_form() -> Response | tuple[str, int]:
    import access  # access imports this module

    if not access.enabled():
        return redirect("/", 303)  # nothing to sign in to
    return render_template("signin.html"), 200


@bp.post("/signin")
def signin() -> Response | tuple[str, int]:
    check_origin()
    import access  # access imports this module

    if not access.enabled():
        return redirect("/", 303)
    client = request.remote_addr or "unknown"
    limiter: FailureLimiter = current_app.extensions["var_keeper.signin"]
    wait = limiter.blocked_for(client)
    if wait:
        log.warning("sign-in refused: too many failures from %s", client)
        message = f"too many failed sign-ins: try again in {wait} seconds"
        return render_template("signin.html", problem=message), 429, {"Retry-After": str(wait)}
    form = _form_or_none() or {}
    secret = form.get("token", "").strip()
    if not secret:
        return render_template("signin.html", problem="enter your token"), 400
    token = access.current_policy().find(policy.digest(secret))
    if token is None:
        limiter.failed(client)
        log.warning("failed sign-in from %s", client)
        time.sleep(FAILED_SIGNIN_DELAY)
        return render_template("signin.html", problem="that token is not valid"), 401
    flask_session.clear()
    flask_session.permanent = True
    flask_session.update(ref=_session_ref(token), csrf=secrets.token_urlsafe(32))
    log.info("%s signed in from %s", token.name, client)
    return redirect("/", 303)


@bp.post("/signout")
def signout() -> Response:
    check_form_post()
    flask_session.clear()
    return redirect("/signin", 303)


# --- Forms


def csrf_token() -> str:
    """The token this page's forms carry: the session's, else the vk_csrf cookie's (made on
    first use and set on the response)."""
    if g.get("signed_in"):
        return str(flask_session["csrf"])
    token = g.get("csrf_cookie") or request.cookies.get(CSRF_COOKIE, "")
    if len(token) < 32 or not token.isascii():
        token = secrets.token_urlsafe(32)
    g.csrf_cookie = token
    return token


def _set_csrf_cookie(response: Response) -> Response:
    token = g.get("csrf_cookie")
    if token and token != request.cookies.get(CSRF_COOKIE):
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path="/",
        )
    return response


def check_origin() -> None:
    """403 for a request a browser sent from another origin (a form on another site, a
    ``data:`` page). ``Sec-Fetch-Site`` decides when the browser sends it: our pages' own
    forms carry ``Origin: null`` (their Referrer-Policy is no-referrer). Older browsers are
    judged by ``Origin``; clients that send neither header are not browsers."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site not in ("same-origin", "none"):
            message = f"a form from another site ({fetch_site}) is refused"
            raise ApiError(403, "cross_site", message)
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise ApiError(403, "cross_site", "a form from another origin is refused")


def check_form_post() -> None:
    """For every POST of the page's forms: our own origin, and the right CSRF token."""
    if request.method != "POST":
        return
    check_origin()
    if request.headers.get("Authorization"):
        return  # a Bearer client: no ambient credential for another site to ride on
    sent = _sent_csrf()
    if g.get("signed_in"):
        expected = str(flask_session.get("csrf", ""))
    else:
        expected = request.cookies.get(CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(
            403,
            "csrf",
            "this form is out of date or did not come from this page: reload the page and "
            "submit it again",
        )


def _sent_csrf() -> str:
    """The form's CSRF token, even from a form the view will refuse as malformed (the token is
    ASCII): such a form gets the view's 400, not a 403."""
    if request.mimetype != inputs.FORM:
        return ""
    fields = parse_qsl(request.get_data(cache=True).decode("latin-1"), keep_blank_values=True)
    return next((value for key, value in fields if key == CSRF_FIELD), "")


def _form_or_none() -> dict[str, str] | None:
    """The form, decoded strictly and kept for the view (which reads it again)."""
    if request.mimetype != inputs.FORM:
        return None
    try:
        return inputs.form_fields(request.get_data(cache=True))
    except ApiError:
        return None


def page_error(exc: ApiError) -> tuple[str, int, dict[str, str]]:
    """An error on the page, as a page: the sign-in form for a 401."""
    if exc.status == 401:
        return render_template("signin.html", problem=None), 401, exc.headers
    page = render_template("error.html", status=exc.status, message=exc.message)
    return page, exc.status, exc.headers


# --- Slowing down guessing


class FailureLimiter:
    """Failed sign-ins per client over the last minute, in this worker's memory."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def blocked_for(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 if it may now."""
        with self._lock:
            recent = self._recent(client)
            if len(recent) < self.max_failures:
                return 0
            return max(1, int(recent[0] + FAILURE_WINDOW - time.monotonic()) + 1)

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(time.monotonic())
            self._failures.move_to_end(client)
            while len(self._failures) > MAX_CLIENTS_TRACKED:
                self._failures.popitem(last=False)

    def _recent(self, client: str) -> deque[float]:
        recent = self._failures.setdefault(client, deque())
        while recent and recent[0] < time.monotonic() - FAILURE_WINDOW:
            recent.popleft()
        return recent
