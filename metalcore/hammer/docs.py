"""Blueprint ``docs``: the swagger, where metal-core served it (``/apidocs.json``)."""

from flask import Blueprint, Response

from metalcore.hammer.context import ctx

bp = Blueprint("docs", __name__)


@bp.get("/apidocs.json")
def apidocs() -> Response:
    """metal-core's swagger as this proxy really behaves (metalcore/hammer/spec.py served_spec)."""
    return Response(ctx().spec_json, mimetype="application/json")
