"""The boot decision: pure parts and the BootDecider with a fake Metal API and a fake clock."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest

from metalcore.boot import BootConfig, BootDecider, Decision, DecisionCache, Verdict, build_response, classify, normalize_mac
from metalcore.errors import CircuitOpen, MetalAPIError, MetalAPIUnavailable

BOOTCONFIG = {"kernelurl": "http://k", "imageurl": "http://i", "commandline": "console=ttyS0"}


@pytest.mark.parametrize("raw", ["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "aabbccddeeff", " aa:bb:cc:dd:ee:ff "])
def test_normalize_mac(raw):
    assert normalize_mac(raw) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize("raw", ["", "aa:bb:cc:dd:ee", "aa:bb-cc:dd:ee:ff", "gg:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff:00"])
def test_normalize_mac_refuses(raw):
    with pytest.raises(ValueError):
        normalize_mac(raw)


def test_classify_follows_metal_core():
    assert classify([])[0] is Verdict.DISCOVERY
    assert classify([{"id": "m", "allocation": None}]) == (Verdict.DISCOVERY, "machine is not allocated", "m")
    assert classify([{"id": "m", "allocation": {"succeeded": False}}])[0] is Verdict.DISCOVERY
    assert classify([{"id": "m", "allocation": {"succeeded": True}}])[0] is Verdict.DISK
    verdict, reason, mid = classify([{"id": "a"}, {"id": "b"}])
    assert verdict is Verdict.AMBIGUOUS and "a, b" in reason and mid is None


def test_build_response_cmdline():
    r = build_response(BootConfig.from_api(BOOTCONFIG), metal_core_ip="10.0.0.1", metal_core_port=4242,
                       metal_api_url="http://api:8080/metal", debug=True)
    assert r.to_dict() == {"kernel": "http://k", "initrd": ["http://i"], "cmdline":
                           "console=ttyS0 METAL_CORE_ADDRESS=10.0.0.1:4242 METAL_API_URL=http://api:8080/metal DEBUG=1"}
    empty = build_response(BootConfig("http://k", "http://i", ""), metal_core_ip="10.0.0.1", metal_core_port=1,
                           metal_api_url="u")
    assert empty.cmdline == "METAL_CORE_ADDRESS=10.0.0.1:1 METAL_API_URL=u"


def test_bootconfig_from_api_needs_urls():
    assert BootConfig.from_api(None) is None
    assert BootConfig.from_api({"kernelurl": "", "imageurl": "x"}) is None
    assert BootConfig.from_api({"kernelurl": "k", "imageurl": "i", "commandline": None}) == BootConfig("k", "i", "")


def test_cache_expires_and_is_bounded():
    c = DecisionCache(ttl=5, max_entries=2)
    d = Decision(Verdict.DISK, "x")
    c.put("a", d, now=100)
    assert c.get("a", 104.9) is d
    assert c.get("a", 105) is None
    c.put("a", d, 0), c.put("b", d, 0), c.put("c", d, 0)
    assert len(c) == 2 and c.get("a", 1) is None
    c.put("x", d, 10)
    assert c.get("x", 9) is None  # clock went backwards: do not trust the entry
    DecisionCache(ttl=0).put("a", d, 0)


class FakeAPI:
    def __init__(self):
        self.machines: list = []
        self.partition: dict | Exception = {"bootconfig": BOOTCONFIG}
        self.find_error: Exception | None = None
        self.finds = 0
        self.partitions = 0

    def find_machines_by_mac(self, mac):
        self.finds += 1
        if self.find_error:
            raise self.find_error
        return self.machines

    def get_partition(self, pid):
        self.partitions += 1
        if isinstance(self.partition, Exception):
            raise self.partition
        return self.partition


def settings(**kw):
    base = dict(partition_id="p", boot_fail_open=True, boot_decision_cache=5.0,
                cidr=ipaddress.ip_interface("10.0.0.1/24"), port=4242, metal_api_url="http://api:8080",
                log_level="info")
    base.update(kw)
    return SimpleNamespace(**base)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_decider_caches_per_mac():
    api, clock = FakeAPI(), Clock()
    d = BootDecider(settings(), api, clock=clock)
    assert d.decide("aa:bb:cc:dd:ee:ff").kernel == "http://k"
    assert d.explain("AA-BB-CC-DD-EE-FF").cached is True
    assert api.finds == 1
    clock.now += 5
    d.decide("aa:bb:cc:dd:ee:ff")
    assert api.finds == 2


def test_decider_disk_and_ambiguous_give_none():
    api = FakeAPI()
    d = BootDecider(settings(boot_decision_cache=0), api, clock=Clock())
    api.machines = [{"id": "m", "allocation": {"succeeded": True}}]
    assert d.decide("aa:bb:cc:dd:ee:ff") is None
    api.machines = [{"id": "a"}, {"id": "b"}]
    e = d.explain("aa:bb:cc:dd:ee:ff")
    assert e.verdict is Verdict.AMBIGUOUS and e.response is None and e.machine_ids == ("a", "b")


@pytest.mark.parametrize("error", [MetalAPIUnavailable("down"), CircuitOpen("open"), MetalAPIError(500, "boom")])
def test_decider_fail_open_and_closed(error):
    api = FakeAPI()
    api.find_error = error
    assert BootDecider(settings(), api, clock=Clock()).decide("aa:bb:cc:dd:ee:ff").kernel == "http://k"
    closed = BootDecider(settings(boot_fail_open=False), api, clock=Clock()).explain("aa:bb:cc:dd:ee:ff")
    assert closed.verdict is Verdict.UNAVAILABLE and closed.response is None


def test_decider_errors_are_not_cached():
    api = FakeAPI()
    d = BootDecider(settings(), api, clock=Clock())
    api.find_error = MetalAPIUnavailable("down")
    d.decide("aa:bb:cc:dd:ee:ff")
    api.find_error = None
    api.machines = [{"id": "m", "allocation": {"succeeded": True}}]
    assert d.decide("aa:bb:cc:dd:ee:ff") is None


def test_bootconfig_last_good_then_fallback():
    api, clock = FakeAPI(), Clock()
    d = BootDecider(settings(boot_decision_cache=1), api, clock=clock)
    assert d.bootconfig().kernel_url == "http://k"
    api.partition = MetalAPIUnavailable("down")
    clock.now += 2
    assert d.bootconfig().kernel_url == "http://k"  # last good kept
    assert api.partitions == 2
    d2 = BootDecider(settings(), api, clock=clock)
    assert d2.decide("aa:bb:cc:dd:ee:ff") is None  # nothing known at all
    assert d2.explain("aa:bb:cc:dd:ee:01").verdict is Verdict.NO_BOOTCONFIG
    d2.set_fallback_bootconfig({"kernelurl": "http://fk", "imageurl": "http://fi"})
    assert d2.decide("aa:bb:cc:dd:ee:ff").kernel == "http://fk"


def test_bootconfig_refreshed_at_most_once_per_period():
    api, clock = FakeAPI(), Clock()
    d = BootDecider(settings(boot_decision_cache=5, boot_fail_open=True), api, clock=clock)
    for i in range(10):
        d.decide(f"aa:bb:cc:dd:ee:{i:02x}")
    assert api.partitions == 1 and api.finds == 10


def test_ipv6_metal_core_address():
    d = BootDecider(settings(cidr=ipaddress.ip_interface("fd00::1/64")), FakeAPI(), clock=Clock())
    assert "METAL_CORE_ADDRESS=[fd00::1]:4242" in d.decide("aa:bb:cc:dd:ee:ff").cmdline
