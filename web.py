"""The web page at ``/``: browse and edit variables (placeholder until the page lands)."""

from flask import Blueprint

bp = Blueprint("web", __name__)


@bp.get("/")
def index() -> str:
    return "var_keeper"
