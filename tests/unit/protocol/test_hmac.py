"""HMAC signer/verifier against the vectors of metal-stack/security mac_test.go (@0660bc5)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from metalcore.errors import HMACNotApplicable, HMACRejected
from metalcore.protocol.hmac import (
    SALT_LETTERS,
    HMACSigner,
    HMACUser,
    HMACVerifier,
    Role,
    UserDirectory,
    compute_mac,
    format_date,
    make_salt,
    parse_date,
)

T0 = datetime(2019, 1, 16, 14, 44, 45, 123, tzinfo=timezone.utc)  # time.Date(..., 123 ns) of the Go tests


# --- upstream vectors -------------------------------------------------------------------------------

def test_add_auth_vector():
    # TestAddAuth: type "mytype", key {1,2,3}, GET, salt stubbed to bytes {1..6}
    salt = bytes([1, 2, 3, 4, 5, 6]).decode()
    headers = HMACSigner("mytype", bytes([1, 2, 3])).headers("GET", T0, salt)
    assert headers["Authorization"] == "mytype f8d293a06bdde899a5bd1dd61b13842564650c717c742db02c4e1a888fc22501"
    assert headers["X-Date"] == "2019-01-16T14:44:45Z"
    assert headers["X-Data-Salt"] == salt


def test_mac_calc_vector():
    # TestMacCalc: create(ts, {6,7,8,9}) is date || blob, i.e. the same concatenation
    assert compute_mac(bytes([1, 2, 3]), "2019-01-16T14:44:45Z", bytes([6, 7, 8, 9]).decode(), "") == (
        "bfb747058c7036befe1e32ce1d180099aa85951656e2164245b53e766074e262")


@pytest.mark.parametrize("key,date,method,expected", [
    ("metal-test-admin", "2019-05-29T09:26:39.000Z", "GET",
     "dd864d767ca9eec0337727e6ae69a30c47fa1501d1df9c7f2c4caaa83cf2f9f3"),
    ("metal-test-view", "2019-05-29T09:26:39.000Z", "GET",
     "fa7874b573da17b6b3d16d0f93eb294487cc6dba4f7c62fcac66016ad9601780"),
    ("metal-test-admin", "2019-05-29T12:10:28.000Z", "GET",
     "086fe2ca42719ce22e5c4d4f90ab7c3ec18bb7c43827adeff2a9f19105c1b8c7"),
    ("metal-test-admin", "2019-05-29T12:30:43Z", "PUT",
     "e4b6f0e0f793e58efe7121fc5a3fe731f593e40f3ac27ebc1af09366ef7415f5"),
])
def test_mac_calc2_vectors(key, date, method, expected):
    # TestMacCalc2: the date is parsed and re-formatted (".000Z" -> "Z") before it is signed
    assert compute_mac(key, format_date(parse_date(date)), method, "") == expected


# --- signer -----------------------------------------------------------------------------------------

def test_salt_is_24_letters_from_the_rng():
    salt = make_salt(random.Random(7))
    assert len(salt) == 24 and set(salt) <= set(SALT_LETTERS)
    assert salt == make_salt(random.Random(7))  # the random source is passed in


def test_signer_hides_key():
    s = HMACSigner(HMACUser.EDIT, "super-secret-edit-key")
    assert "super-secret" not in repr(s) and "super-secret" not in str(s)
    v = HMACVerifier(HMACUser.EDIT, "super-secret-edit-key")
    assert "super-secret" not in repr(v)
    d = UserDirectory([v])
    assert "super-secret" not in repr(d)


def test_format_date_needs_aware_time_and_converts_to_utc():
    with pytest.raises(ValueError):
        format_date(datetime(2020, 1, 1))
    cest = timezone(timedelta(hours=2))
    assert format_date(datetime(2020, 7, 1, 12, 0, 0, 999999, tzinfo=cest)) == "2020-07-01T10:00:00Z"


# --- verifier ---------------------------------------------------------------------------------------

def _signed(user=HMACUser.EDIT, key="edit-key", method="POST", now=T0, salt="a" * 24):
    return HMACSigner(user, key).headers(method, now, salt)


def test_round_trip():
    h = _signed()
    v = HMACVerifier(HMACUser.EDIT, "edit-key")
    assert v.verify("POST", h["Authorization"], h["X-Date"], h["X-Data-Salt"], T0 + timedelta(seconds=5)) == (
        "Metal-Edit")


@pytest.mark.parametrize("auth,msg", [
    (None, "no auth found"),
    ("", "no auth found"),
    ("abc", "illegal auth found"),
    ("Metal-Edit  deadbeef", "illegal auth found"),  # Go's strings.Split(" ") gives three parts
    ("Metal-View deadbeef", "unknown authtype found"),
])
def test_not_applicable(auth, msg):
    v = HMACVerifier(HMACUser.EDIT, "edit-key")
    with pytest.raises(HMACNotApplicable, match=msg):
        v.verify("GET", auth, format_date(T0), "", T0)


def test_wrong_key_method_or_salt_rejected():
    h = _signed()
    v = HMACVerifier(HMACUser.EDIT, "other-key")
    with pytest.raises(HMACRejected, match="Wrong HMAC found"):
        v.verify("POST", h["Authorization"], h["X-Date"], h["X-Data-Salt"], T0)
    ok = HMACVerifier(HMACUser.EDIT, "edit-key")
    with pytest.raises(HMACRejected):
        ok.verify("GET", h["Authorization"], h["X-Date"], h["X-Data-Salt"], T0)
    with pytest.raises(HMACRejected):
        ok.verify("POST", h["Authorization"], h["X-Date"], "b" * 24, T0)


def test_lifetime():
    h = _signed()
    v = HMACVerifier(HMACUser.EDIT, "edit-key", lifetime=30)
    args = ("POST", h["Authorization"], h["X-Date"], h["X-Data-Salt"])
    signed_at = T0.replace(microsecond=0)  # X-Date carries whole seconds
    assert v.verify(*args, signed_at + timedelta(seconds=30))
    with pytest.raises(HMACRejected, match="too old"):
        v.verify(*args, signed_at + timedelta(seconds=30, microseconds=1))
    # a date in the future is accepted, as upstream does
    assert v.verify(*args, T0 - timedelta(hours=1))
    # lifetime 0 disables the check
    assert HMACVerifier(HMACUser.EDIT, "edit-key", lifetime=0).verify(*args, T0 + timedelta(days=400))


@pytest.mark.parametrize("bad", ["", "2019-01-16 14:44:45Z", "2019-01-16T14:44:45", "2019-02-30T00:00:00Z",
                                 "yesterday"])
def test_unparsable_date_rejected(bad):
    v = HMACVerifier(HMACUser.EDIT, "edit-key")
    with pytest.raises(HMACRejected, match="unknown timestamp"):
        v.verify("GET", "Metal-Edit 00", bad, "", T0)


def test_fractional_and_offset_dates_are_parsed():
    assert parse_date("2019-05-29T09:26:39.123456789Z") == datetime(2019, 5, 29, 9, 26, 39, 123456, timezone.utc)
    assert parse_date("2019-05-29T11:26:39+02:00") == datetime(2019, 5, 29, 9, 26, 39, tzinfo=timezone.utc)


def test_directory_users_and_roles():
    d = UserDirectory.from_keys({HMACUser.VIEW: "v", HMACUser.EDIT: "e", HMACUser.ADMIN: "a"})
    for user, key, role in [(HMACUser.VIEW, "v", Role.VIEW), (HMACUser.EDIT, "e", Role.EDIT),
                            (HMACUser.ADMIN, "a", Role.ADMIN)]:
        h = _signed(user, key)
        got = d.authenticate("POST", h["Authorization"], h["X-Date"], h["X-Data-Salt"], T0)
        assert got == user.value and d.role_of(got) is role
    # nobody claims it: guest
    assert d.authenticate("GET", None, None, None, T0) is None
    assert d.authenticate("GET", "Bearer xyz", None, None, T0) is None
    assert d.role_of(None) is Role.GUEST
    # the edit user's header signed with the view key: the edit verifier claims it and rejects it
    h = _signed(HMACUser.EDIT, "v")
    with pytest.raises(HMACRejected):
        d.authenticate("POST", h["Authorization"], h["X-Date"], h["X-Data-Salt"], T0)
