"""Flask app of the Metal API stand-in: the part of metal-api @56e4775d that metal-core calls, plus the
operator calls that create work for it (allocate, free, reinstall, power).

Every /v1 call goes through one dispatcher, in this order:
  faults (latency, down=503, random 5xx) -> HMAC user (403 as metal-lib rest.UserAuth) -> route role
  (403 as metal-api oneOf) -> body parse + swagger check -> handler -> swagger check of the answer ->
  record the call.
A request or answer that does not match the swagger is a VIOLATION: it is recorded (``/_lab/violations``),
logged as an error and answered 500 "lab: schema violation", so a test that passes has spoken metal-api.

metal-api answers every auth failure with 403 and an httperrors body (metal-lib ``rest/middleware.go``
``UserAuth``: bad date, too old, wrong MAC; metal-api ``service.go`` ``oneOf``: "you are not member in one
of [...]" for a guest or a too-weak user); it never answers 401 on these paths.
/_lab/* endpoints are the test side: no auth, not recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from flask import Flask, Response, request
from loguru import logger

from metalcore.errors import HMACRejected
from metalcore.lab.metal_api.events import NsqPublisher, PublishError, command_event, delete_event, machine_topic
from metalcore.lab.metal_api.recorder import FaultBox, Recorder
from metalcore.lab.metal_api.schema import SwaggerSchema
from metalcore.lab.metal_api.store import ApiError, Store
from metalcore.protocol.hmac import DEFAULT_LIFETIME, HMACUser, Role, UserDirectory

__all__ = ["LabConfig", "LabState", "ROUTES", "create_app"]

DEFAULT_KEYS = {HMACUser.VIEW.value: "lab-view-key", HMACUser.EDIT.value: "lab-edit-key",
                HMACUser.ADMIN.value: "lab-admin-key"}

# group names of metal-api's 2020 user directory, for the "not member" message
_GROUPS = {Role.VIEW: "[maas-all-all-view maas-all-all-edit maas-all-all-admin]",
           Role.EDIT: "[maas-all-all-edit maas-all-all-admin]", Role.ADMIN: "[maas-all-all-admin]"}


@dataclass
class LabConfig:
    """How the stand-in is set up; everything here can come from the command line."""

    keys: dict[str, str]
    """HMAC key per user name (Metal-View, Metal-Edit, Metal-Admin)."""
    partition_id: str = "lab"
    bootconfig: dict | None = None
    """imageurl, kernelurl, commandline of the partition."""
    nsqd_http: str | None = None
    """host:port of nsqd's HTTP API; None: events are only recorded (GET /_lab/events)."""
    wait_timeout: float = 30.0
    """metal-api's waitForServerTimeout; tests shorten it."""
    hmac_lifetime: float = DEFAULT_LIFETIME
    basepath: str = ""
    twin_switches: bool = True
    """metal-api demands every machine be connected to exactly two switches."""


@dataclass
class LabState:
    config: LabConfig
    store: Store
    recorder: Recorder
    faults: FaultBox
    publisher: NsqPublisher
    schema: SwaggerSchema
    refuse_hook: Callable[[float], None] | None = None
    """Set by the server: close the listener for N seconds (Faults.down == "refused")."""
    directory: UserDirectory | None = None
    wrong_directory: UserDirectory | None = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the swagger path, with {id}
    role: Role
    handler: Callable[..., tuple[int, Any]]


ROUTES: list[Route] = []


def route(method: str, path: str, role: Role):
    def deco(fn):
        ROUTES.append(Route(method, path, role, fn))
        return fn
    return deco


# --- handlers: (state, body, **path params) -> (status, body) ------------------------------------

@route("POST", "/v1/machine/find", Role.VIEW)
def _find(st: LabState, body):
    return 200, st.store.find_machines(body or {})


@route("GET", "/v1/machine/{id}", Role.VIEW)
def _get_machine(st: LabState, body, id):
    return 200, st.store.machine_response(id)


@route("POST", "/v1/machine/register", Role.EDIT)
def _register(st: LabState, body):
    return st.store.register_machine(body)


@route("GET", "/v1/machine/{id}/wait", Role.EDIT)
def _wait(st: LabState, body, id):
    m = st.store.wait_for_allocation(id, st.config.wait_timeout)
    if m is None:
        raise ApiError(504, "server timeout")
    return 200, m


@route("POST", "/v1/machine/{id}/event", Role.EDIT)
def _event(st: LabState, body, id):
    return 200, st.store.add_event(id, body)


@route("POST", "/v1/machine/{id}/finalize-allocation", Role.EDIT)
def _finalize(st: LabState, body, id):
    return 200, st.store.finalize_allocation(id, body)


@route("POST", "/v1/machine/{id}/abort-reinstall", Role.EDIT)
def _abort_reinstall(st: LabState, body, id):
    return 200, st.store.abort_reinstall(id, body)


@route("GET", "/v1/machine/{id}/ipmi", Role.VIEW)
def _ipmi(st: LabState, body, id):
    return 200, st.store.machine_response(id, with_ipmi=True)


@route("POST", "/v1/machine/{id}/chassis-identify-led-state", Role.EDIT)
def _led_state(st: LabState, body, id):
    return 200, st.store.set_led_state(id, body)


@route("GET", "/v1/partition/{id}", Role.GUEST)
def _partition(st: LabState, body, id):
    return 200, st.store.partition(id)


@route("POST", "/v1/switch/register", Role.EDIT)
def _register_switch(st: LabState, body):
    return st.store.register_switch(body)


@route("GET", "/v1/switch/{id}", Role.GUEST)
def _get_switch(st: LabState, body, id):
    return 200, st.store.switch_response(id)


@route("POST", "/v1/switch/{id}/notify", Role.EDIT)
def _notify_switch(st: LabState, body, id):
    return 200, st.store.notify_switch(id, body)


# --- operator side --------------------------------------------------------------------------------

def _publish(st: LabState, mid: str, event: dict) -> None:
    m = st.store.machine_response(mid)
    partition = (m["partition"] or {}).get("id") or st.config.partition_id
    try:
        st.publisher.publish(machine_topic(partition), event)
    except PublishError as e:
        raise ApiError(500, str(e)) from None


@route("POST", "/v1/machine/allocate", Role.EDIT)
def _allocate(st: LabState, body):
    return 200, st.store.allocate(body)


@route("DELETE", "/v1/machine/{id}/free", Role.EDIT)
def _free(st: LabState, body, id):
    m = st.store.free(id)
    _publish(st, id, delete_event(id))
    return 200, m


@route("POST", "/v1/machine/{id}/reinstall", Role.EDIT)
def _reinstall(st: LabState, body, id):
    m = st.store.reinstall(id, body)
    _publish(st, id, command_event(id, "REINSTALL"))
    return 200, m


def _power(cmd: str, planned_reboot: bool = False):
    def handler(st: LabState, body, id, description: str | None = None):
        st.store.machine_response(id)  # 404 first
        if planned_reboot:  # machineReset / machineOff store a "Planned Reboot" event first
            st.store.add_planned_reboot(id)
        _publish(st, id, command_event(id, cmd, [description] if description else None))
        return 200, st.store.machine_response(id)
    return handler


for _verb, _cmd, _reboot in (("on", "ON", False), ("off", "OFF", True), ("reset", "RESET", True),
                             ("bios", "BIOS", False)):
    route("POST", f"/v1/machine/{{id}}/power/{_verb}", Role.EDIT)(_power(_cmd, _reboot))
route("POST", "/v1/machine/{id}/power/chassis-identify-led-on", Role.EDIT)(_power("LED-ON"))
route("POST", "/v1/machine/{id}/power/chassis-identify-led-on/{description}", Role.EDIT)(_power("LED-ON"))
route("POST", "/v1/machine/{id}/power/chassis-identify-led-off/{description}", Role.EDIT)(_power("LED-OFF"))
# Newer metal-api (disk/pxe a7e5468b 2020-11, cycle dc3d50ce 2021-07) - not in the 56e4775d swagger;
# served because metalcore handles these commands. Checked like power/on (EmptyBody in, machine out).
NEWER_POWER = {"/v1/machine/{id}/power/disk": "DISK", "/v1/machine/{id}/power/pxe": "PXE",
               "/v1/machine/{id}/power/cycle": "CYCLE"}
for _path, _cmd in NEWER_POWER.items():
    route("POST", _path, Role.EDIT)(_power(_cmd, planned_reboot=_cmd == "CYCLE"))


# --- dispatcher -----------------------------------------------------------------------------------

def _json_response(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"statuscode": status, "message": message}


def _dispatch(st: LabState, r: Route, params: dict) -> tuple[int, Any, str | None]:
    """Returns (status, body, user)."""
    swagger_path = NEWER_POWER_SCHEMA.get(r.path, r.path)
    faults = st.faults.get()
    affected = faults.match in request.path
    if affected and faults.latency > 0:
        time.sleep(faults.latency)
    if affected and faults.down == "503":
        return (*_error(503, "lab: down"), None)
    if affected and st.faults.roll(faults.error_rate):
        return (*_error(faults.error_status, "lab: injected error"), None)

    directory = st.wrong_directory if faults.wrong_key else st.directory
    try:
        user = directory.authenticate(request.method, request.headers.get("Authorization"),
                                      request.headers.get("X-Date"), request.headers.get("X-Data-Salt"),
                                      datetime.now(timezone.utc))
    except HMACRejected as e:
        return (*_error(403, str(e)), None)
    if directory.role_of(user) < r.role:
        return (*_error(403, f"you are not member in one of {_GROUPS[r.role]}"), user)

    raw = request.get_data()
    has_body = bool(raw.strip())
    body = None
    if has_body:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return (*_violation(st, r, "request", [f"body is not JSON: {e}"], raw[:500].decode("latin-1")), user)
    errors = st.schema.request_errors(r.method, swagger_path, body, has_body)
    if errors:
        return (*_violation(st, r, "request", errors, body), user)

    try:
        status, out = r.handler(st, body, **params)
    except ApiError as e:
        status, out = _error(e.status, e.message)
    errors = st.schema.response_errors(r.method, swagger_path, status, out)
    if errors:
        return (*_violation(st, r, "response", errors, out), user)
    return status, out, user


NEWER_POWER_SCHEMA = {p: "/v1/machine/{id}/power/on" for p in NEWER_POWER}


def _violation(st: LabState, r: Route, kind: str, errors: list[str], body: Any) -> tuple[int, dict]:
    record = {"method": r.method, "path": request.path, "operation": r.path, "kind": kind,
              "errors": errors, "body": body, "time": time.time()}
    st.recorder.violation(record)
    logger.error("metal-api stand-in: {} schema violation on {} {}: {}", kind, r.method, request.path, errors)
    return _error(500, f"lab: {kind} schema violation: {'; '.join(errors)[:1000]}")


def _make_view(st: LabState, r: Route):
    def view(**params):
        started = time.time()
        status, body, user = _dispatch(st, r, params)
        try:
            req_body = request.get_json(silent=True)
        except Exception:  # noqa: BLE001 - the record must not fail the call
            req_body = None
        st.recorder.call({"method": r.method, "path": request.path, "operation": r.path,
                          "query": request.query_string.decode(), "body": req_body, "status": status,
                          "response": body, "user": user, "time": started,
                          "duration": round(time.time() - started, 4)})
        return _json_response(status, body)
    view.__name__ = f"{r.method} {r.path}"
    return view


# --- /_lab ----------------------------------------------------------------------------------------

def _register_lab(app: Flask, st: LabState) -> None:
    def j(body: Any, status: int = 200) -> Response:
        return _json_response(status, body)

    @app.get("/_lab/health")
    def health():
        return j({"ok": True, "partition": st.config.partition_id})

    @app.get("/_lab/calls")
    def calls():
        since = int(request.args.get("since", 0))
        return j(st.recorder.calls()[since:])

    @app.delete("/_lab/calls")
    def clear_calls():
        st.recorder.clear_calls()
        return j({"ok": True})

    @app.get("/_lab/violations")
    def violations():
        return j(st.recorder.violations())

    @app.delete("/_lab/violations")
    def take_violations():
        return j(st.recorder.take_violations())

    @app.get("/_lab/faults")
    def get_faults():
        return j(asdict(st.faults.get()))

    @app.post("/_lab/faults")
    def set_faults():
        try:
            f = st.faults.set(request.get_json(force=True) or {})
        except (ValueError, TypeError) as e:
            return j({"message": str(e)}, 400)
        if f.down == "refused":
            if st.refuse_hook is None:
                st.faults.set({"down": None})
                return j({"message": "down='refused' needs the stand-in's own server (serve())"}, 400)
            st.refuse_hook(f.down_seconds)
        return j(asdict(f))

    @app.delete("/_lab/faults")
    def reset_faults():
        return j(asdict(st.faults.reset()))

    @app.get("/_lab/machines")
    def machines():
        return j([st.store.machine_response(m, with_ipmi=True) for m in st.store.machine_ids()])

    @app.get("/_lab/switches")
    def switches():
        return j([st.store.switch_response(s) for s in st.store.switch_ids()])

    @app.get("/_lab/events")
    def events():
        return j(st.publisher.events())

    @app.post("/_lab/partitions")
    def partitions():
        body = request.get_json(force=True) or {}
        if not body.get("id"):
            return j({"message": "partition needs an id"}, 400)
        return j(st.store.upsert_partition(body))


def create_app(config: LabConfig | None = None, *, state: LabState | None = None) -> Flask:
    """The stand-in as a Flask app. ``app.extensions["metal_api_lab"]`` is its :class:`LabState`."""
    if state is None:
        config = config or LabConfig(keys=dict(DEFAULT_KEYS))
        store = Store(partitions=[{"id": config.partition_id, "name": config.partition_id,
                                   "description": "metalcore lab partition", "bootconfig": config.bootconfig or {}}],
                      twin_switches=config.twin_switches)
        state = LabState(config=config, store=store, recorder=Recorder(), faults=FaultBox(),
                         publisher=NsqPublisher(config.nsqd_http), schema=SwaggerSchema())
    st = state
    st.directory = UserDirectory.from_keys(st.config.keys, st.config.hmac_lifetime)
    # the wrong_key fault: same users, keys nobody has
    st.wrong_directory = UserDirectory.from_keys({u: f"wrong-{u}" for u in st.config.keys}, st.config.hmac_lifetime)
    for p in st.store.partitions:
        st.publisher.create_topic(machine_topic(p))

    app = Flask("metal_api_lab")
    app.extensions["metal_api_lab"] = st
    base = "/" + st.config.basepath.strip("/") if st.config.basepath.strip("/") else ""
    for r in ROUTES:
        rule = base + r.path.replace("{", "<").replace("}", ">")
        app.add_url_rule(rule, endpoint=f"{r.method} {r.path}", view_func=_make_view(st, r), methods=[r.method])

    @app.errorhandler(404)
    def not_found(e):
        return _json_response(404, {"statuscode": 404, "message": f"lab: no route {request.method} {request.path}"})

    @app.errorhandler(405)
    def not_allowed(e):
        return _json_response(405, {"statuscode": 405, "message": f"lab: {request.method} not allowed here"})

    _register_lab(app, st)
    return app
