import pytest

from metalcore import config


BASE = {"METAL_CORE_PARTITION_ID": "p1", "METAL_CORE_RACK_ID": "r1", "METAL_CORE_HMAC_KEY": "k3y-secret",
        "METAL_CORE_CIDR": "10.1.0.1/24", "METAL_CORE_PXE_INTERFACE": "eth0"}


def test_defaults_are_metal_cores():
    s = config.load("", environ={})
    assert s.port == 4242 and s.metrics_server_port == 2112 and s.mq_address == "localhost:4161"
    assert s.reconfigure_switch is False and s.reconfigure_switch_interval == 10.0
    assert s.change_boot_order is True and s.machine_topic_ttl == 30.0 and s.pxe_vlan_id == 4000


def test_env_names_of_metal_core_keep_their_meaning():
    env = dict(BASE, METAL_CORE_METAL_API_PROTOCOL="https", METAL_CORE_METAL_API_IP="api", METAL_CORE_METAL_API_PORT="443",
               METAL_CORE_METAL_API_BASEPATH="/metal", METAL_CORE_MACHINE_TOPIC_TTL="5000",
               METAL_CORE_RECONFIGURE_SWITCH_INTERVAL="1m30s", METAL_CORE_SPINE_UPLINKS="swp31, swp32,swp33")
    s = config.load("hammer_proxy", environ=env)
    assert s.metal_api_url == "https://api:443/metal"
    assert s.metal_core_address == "10.1.0.1:4242"
    assert s.machine_topic_ttl == 5.0 and s.reconfigure_switch_interval == 90.0
    assert s.spine_uplinks == ("swp31", "swp32", "swp33")
    assert s.topic == "p1-machine"
    assert s.metrics_port == 2113


def test_file_then_env_precedence(tmp_path):
    f = tmp_path / "mc.toml"
    f.write_text('partition_id = "from-file"\nport = 5000\n[[switch]]\nname = "leaf01"\nhost = "127.0.0.1"\n'
                 'port = 8830\nusername = "u"\npassword = "p"\n')
    s = config.load("", environ={"METAL_CORE_PORT": "6000"}, path=str(f))
    assert s.partition_id == "from-file" and s.port == 6000
    assert s.switches[0].name == "leaf01" and s.switches[0].port == 8830


def test_switches_from_env():
    s = config.load("", environ={"METAL_CORE_SWITCHES": "leaf01=netconf://u:p%40ss@127.0.0.1:8830,leaf02=netconf://u:x@h"})
    assert [(t.name, t.host, t.port, t.password) for t in s.switches] == [
        ("leaf01", "127.0.0.1", 8830, "p@ss"), ("leaf02", "h", 830, "x")]


@pytest.mark.parametrize("env,fragment", [
    ({"METAL_CORE_PORT": "http"}, "METAL_CORE_PORT: expected an integer 0..65535, got 'http'"),
    ({"METAL_CORE_CIDR": "10.0.0.1"}, "METAL_CORE_CIDR: expected an address with prefix"),
    ({"METAL_CORE_RECONFIGURE_SWITCH": "maybe"}, "METAL_CORE_RECONFIGURE_SWITCH: expected true or false"),
    ({"METAL_CORE_RECONFIGURE_SWITCH_INTERVAL": "10 parsecs"}, "METAL_CORE_RECONFIGURE_SWITCH_INTERVAL: expected a duration"),
    ({"METAL_CORE_PXE_VLAN_ID": "1500"}, "METAL_CORE_PXE_VLAN_ID: 1500 lies in the tenant VLAN range"),
    ({"METAL_CORE_SWITCHES": "leaf01"}, "METAL_CORE_SWITCHES: expected name=netconf://"),
])
def test_bad_values_name_the_setting(env, fragment):
    with pytest.raises(config.ConfigError) as e:
        config.load("", environ=env)
    assert fragment in str(e.value)


def test_required_per_stage():
    env = dict(BASE)
    del env["METAL_CORE_HMAC_KEY"]
    with pytest.raises(config.ConfigError, match="METAL_CORE_HMAC_KEY: required by the nsq_consumer stage"):
        config.load("nsq_consumer", environ=env)
    with pytest.raises(config.ConfigError, match="METAL_CORE_SWITCHES: required by the switch stage"):
        config.load("switch", environ=BASE)


def test_secret_value_never_in_error_or_repr():
    s = config.load("", environ=BASE)
    assert "k3y-secret" not in repr(s)
    assert "k3y-secret" in s.secrets


def test_bad_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("port = [\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load("", environ={}, path=str(f))
    f.write_text("prot = 1\n")
    with pytest.raises(config.ConfigError, match="unknown setting 'prot'"):
        config.load("", environ={}, path=str(f))
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load("", environ={"METAL_CORE_CONFIG": str(tmp_path / "nope.toml")})
