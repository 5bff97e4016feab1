import json

import pytest

from metalcore.protocol.envelope import BadEnvelope, Envelope, decode, encode, trace_id_for


def test_round_trip():
    env = Envelope(kind="job", stream="ipmi", name="power", body={"state": "on"}, ts=1.5, source="nsq_consumer",
                   machine_id="m1", mac="aa:bb:cc:dd:ee:ff", trace_id="t1")
    frames = encode(env)
    assert frames[0] == b"ipmi.power"
    assert decode(frames) == env


def test_optional_ids_are_omitted():
    obj = json.loads(encode(Envelope(kind="event", stream="dhcp", name="discover", ts=1.0))[1])
    assert "machine_id" not in obj and "trace_id" not in obj and obj["v"] == 1


@pytest.mark.parametrize("frames,reason", [
    ([b"x"], "expected 2 frames"),
    ([b"a.b", b"not json"], "not JSON"),
    ([b"a.b", b"[]"], "not a JSON object"),
    ([b"a.b", b'{"v": 2}'], "unsupported version"),
    ([b"a.b", b'{"v":1,"kind":"shout","stream":"a","name":"b","id":"1","ts":1}'], "unknown kind"),
    ([b"A.b", b'{"v":1,"kind":"event","stream":"A","name":"b","id":"1","ts":1}'], "bad stream"),
    ([b"a.c", b'{"v":1,"kind":"event","stream":"a","name":"b","id":"1","ts":1}'], "topic frame"),
    ([b"a.b", b'{"v":1,"kind":"event","stream":"a","name":"b","id":"","ts":1}'], "missing id"),
    ([b"a.b", b'{"v":1,"kind":"event","stream":"a","name":"b","id":"1","ts":"x"}'], "bad ts"),
    ([b"a.b", b'{"v":1,"kind":"event","stream":"a","name":"b","id":"1","ts":1,"body":[]}'], "body is not"),
    ([b"a.b", b'{"v":1,"kind":"event","stream":"a","name":"b","id":"1","ts":1,"mac":5}'], "mac is not"),
    ([b"a.b", b"\xff\xfe"], "not JSON"),
])
def test_malformed_is_rejected_with_reason(frames, reason):
    with pytest.raises(BadEnvelope, match=reason):
        decode(frames)


def test_trace_id_is_stable_and_case_blind():
    assert trace_id_for("AA:BB:CC:00:11:22") == trace_id_for("aa:bb:cc:00:11:22")
    assert len(trace_id_for("x")) == 16
