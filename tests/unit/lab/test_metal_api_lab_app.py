"""The stand-in's auth and schema checks, through Flask's test client (no socket)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from metalcore.lab.metal_api.app import LabConfig, create_app
from metalcore.lab.metal_api.schema import SwaggerSchema
from metalcore.protocol.hmac import HMACSigner, make_salt

KEYS = {"Metal-View": "v-key", "Metal-Edit": "e-key", "Metal-Admin": "a-key"}


@pytest.fixture
def app():
    return create_app(LabConfig(keys=dict(KEYS), wait_timeout=0.05, twin_switches=False))


@pytest.fixture
def state(app):
    return app.extensions["metal_api_lab"]


def signed(method, user="Metal-Edit", key=None, now=None):
    now = now or datetime.now(timezone.utc)
    return HMACSigner(user, key or KEYS[user]).headers(method, now, make_salt(random.Random(3)))


def call(app, method, path, *, user="Metal-Edit", key=None, now=None, json=None, headers=None):
    h = signed(method, user, key, now) if user else {}
    h.update(headers or {})
    return app.test_client().open(path, method=method, headers=h, json=json)


def test_good_signature_passes(app):
    r = call(app, "GET", "/v1/partition/lab")
    assert r.status_code == 200 and r.json["id"] == "lab"


def test_bad_key_is_403_wrong_hmac(app):
    r = call(app, "POST", "/v1/machine/find", key="not-the-key", json={})
    assert r.status_code == 403
    assert r.json == {"statuscode": 403, "message": "Wrong HMAC found"}


def test_expired_date_is_403(app):
    r = call(app, "POST", "/v1/machine/find", now=datetime.now(timezone.utc) - timedelta(seconds=31), json={})
    assert r.status_code == 403 and "too old" in r.json["message"]


def test_unparsable_date_is_403(app):
    r = call(app, "POST", "/v1/machine/find", json={}, headers={"X-Date": "Mon, 13 Jul 2020 12:00:00 GMT"})
    assert r.status_code == 403 and "unknown timestamp" in r.json["message"]


def test_wrong_role_is_403(app):
    # Metal-View may find but not register
    assert call(app, "POST", "/v1/machine/find", user="Metal-View", json={}).status_code == 200
    r = call(app, "POST", "/v1/machine/register", user="Metal-View", json={"uuid": "m1", "partitionid": "lab"})
    assert r.status_code == 403 and "not member" in r.json["message"]
    # admin may do everything edit may
    r = call(app, "POST", "/v1/machine/register", user="Metal-Admin", json={"uuid": "m1", "partitionid": "lab"})
    assert r.status_code == 201


def test_guest_gets_routes_without_role_only(app):
    assert call(app, "GET", "/v1/partition/lab", user=None).status_code == 200
    r = call(app, "POST", "/v1/machine/find", user=None, json={})
    assert r.status_code == 403
    # another scheme (e.g. a Bearer token) nobody claims is a guest too
    r = call(app, "POST", "/v1/machine/find", user=None, json={}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 403


def test_wrong_key_fault(app, state):
    state.faults.set({"wrong_key": True})
    assert call(app, "POST", "/v1/machine/find", json={}).status_code == 403
    state.faults.reset()
    assert call(app, "POST", "/v1/machine/find", json={}).status_code == 200


def test_bad_request_is_flagged_500_and_recorded(app, state):
    r = call(app, "POST", "/v1/machine/find", json={"nics_mac_addresses": "aa:bb:cc:dd:ee:ff"})
    assert r.status_code == 500 and "schema violation" in r.json["message"]
    v = state.recorder.take_violations()
    assert len(v) == 1 and v[0]["kind"] == "request" and "nics_mac_addresses" in v[0]["errors"][0]


def test_find_with_only_one_field_is_fine(app, state):
    # the swagger lists 40 "required" fields for v1.MachineFindRequest; metal-api needs none
    r = call(app, "POST", "/v1/machine/find", json={"nics_mac_addresses": ["aa:bb:cc:dd:ee:ff"]})
    assert r.status_code == 200 and r.json == []
    assert state.recorder.violations() == []


def test_register_without_uuid_is_a_violation(app, state):
    r = call(app, "POST", "/v1/machine/register", json={"partitionid": "lab"})
    assert r.status_code == 500
    assert any("'uuid' is a required property" in e for e in state.recorder.take_violations()[0]["errors"])


def test_non_json_body_is_a_violation(app, state):
    r = app.test_client().post("/v1/machine/find", data=b"{nope", headers=signed("POST"))
    assert r.status_code == 500
    assert state.recorder.take_violations()[0]["errors"][0].startswith("body is not JSON")


def test_response_violation_is_caught(app, state):
    state.store.partitions["lab"]["typo"] = 1  # a field the swagger does not know, in the stand-in's own data
    r = call(app, "GET", "/v1/partition/lab")
    assert r.status_code == 500
    v = state.recorder.take_violations()[0]
    assert v["kind"] == "response" and any("typo" in e for e in v["errors"])


def test_unknown_event_type_is_422(app):
    r = call(app, "POST", "/v1/machine/m1/event", json={"event": "Dancing"})
    assert r.status_code == 422


def test_event_for_unknown_machine_creates_it(app, state):
    r = call(app, "POST", "/v1/machine/m7/event", json={"event": "PXE Booting", "message": "dhcp"})
    assert r.status_code == 200 and r.json["log"][0]["event"] == "PXE Booting"
    assert "m7" in state.store.machine_ids()
    r = call(app, "GET", "/v1/machine/m7", user="Metal-View")
    assert r.status_code == 200 and r.json["partition"] is None


def test_wait_times_out_with_504(app):
    call(app, "POST", "/v1/machine/register", json={"uuid": "m1", "partitionid": "lab"})
    r = call(app, "GET", "/v1/machine/m1/wait")
    assert r.status_code == 504 and r.json == {"statuscode": 504, "message": "server timeout"}


def test_calls_are_recorded(app, state):
    call(app, "GET", "/v1/partition/lab")
    c = state.recorder.calls()[-1]
    assert (c["method"], c["path"], c["status"], c["user"]) == ("GET", "/v1/partition/lab", 200, "Metal-Edit")
    assert c["duration"] >= 0 and c["time"] > 0


def test_down_503_and_error_rate(app, state):
    state.faults.set({"down": "503"})
    r = call(app, "GET", "/v1/partition/lab")
    assert r.status_code == 503 and r.json["statuscode"] == 503
    state.faults.set({"down": None, "error_rate": 1.0, "error_status": 502, "match": "/partition/"})
    assert call(app, "GET", "/v1/partition/lab").status_code == 502
    assert call(app, "POST", "/v1/machine/find", json={}).status_code == 200  # not matched
    with pytest.raises(ValueError):
        state.faults.set({"down": "sideways"})
    with pytest.raises(ValueError):
        state.faults.set({"down": "refused"})  # needs down_seconds


def test_lab_endpoints(app):
    c = app.test_client()
    assert c.get("/_lab/health").json["ok"]
    assert c.post("/_lab/faults", json={"latency": 0.0, "nonsense": 1}).status_code == 400
    # "refused" needs the real server (no refuse hook in a bare app)
    assert c.post("/_lab/faults", json={"down": "refused", "down_seconds": 1}).status_code == 400
    assert c.get("/_lab/faults").json["down"] is None
    p = c.post("/_lab/partitions", json={"id": "lab", "bootconfig": {"kernelurl": "http://k2"}}).json
    assert p["bootconfig"]["kernelurl"] == "http://k2"
    assert call(app, "GET", "/v1/partition/lab").json["bootconfig"]["kernelurl"] == "http://k2"


def test_schema_transform_keeps_response_required():
    s = SwaggerSchema()
    errs = s.definition_errors("v1.PartitionResponse", {"id": "x"})
    assert any("bootconfig" in e for e in errs)
    # nulls are what Go writes for nil pointers/slices
    assert s.definition_errors("v1.SwitchNic", {"name": "swp1", "mac": "aa", "vrf": "", "filter": None}) == []
    # requests: the 40 "required" find fields are not required
    assert s.definition_errors("v1.MachineFindRequest", {}, for_response=False) == []
