"""Settings: read once at a stage's start from a TOML file and the environment.

Rules of this file:
1. Every setting is declared once, in SETTINGS, with its environment name, its converter, its default and
   a help text that says why it exists (and where the danger is).
2. The environment names of the original metal-core (``METAL_CORE_*``, research note metal-contracts.md §7)
   keep their meaning, so an existing deployment's env file works unchanged. New settings use the same prefix.
3. The TOML file uses the same names in lower case without the prefix (``cidr = "10.0.0.1/24"``).
   Precedence: environment > file > default.
4. A missing or bad value raises ConfigError naming the setting and what is wrong; ``main()`` turns that into
   one line on stderr and a non-zero exit. Nothing below ``main()`` reads the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit

ENV_PREFIX = "METAL_CORE_"
STAGES = ("pxe", "hammer_proxy", "nsq_consumer", "switch", "ipmi")
# Offsets from METAL_CORE_METRICS_SERVER_PORT, so one setting gives every stage its own /metrics port.
METRICS_PORT_OFFSET = {stage: i for i, stage in enumerate(STAGES)}


class ConfigError(ValueError):
    """A setting is missing or has a bad value; the message names the setting."""


# --- converters: each takes the raw value (str from env, or a TOML value) and raises ValueError ------

def _str(v: Any) -> str:
    if not isinstance(v, (str, int, float)):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return str(v)


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"expected an integer {lo}..{hi}, got {v!r}")
        try:
            n = int(str(v).strip())
        except ValueError:
            raise ValueError(f"expected an integer {lo}..{hi}, got {v!r}") from None
        if not lo <= n <= hi:
            raise ValueError(f"expected an integer {lo}..{hi}, got {n}")
        return n
    return conv


_port = _int_range(0, 65535)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on", "t"):
        return True
    if s in ("0", "false", "no", "off", "f", ""):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(default_unit: float) -> Callable[[Any], float]:
    """Go duration strings ("10s", "1m30s", "500ms") as the original used, or a bare number in
    ``default_unit`` seconds (the original's TTLs were bare milliseconds)."""
    def conv(v: Any) -> float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            secs = float(v) * default_unit
        else:
            s = str(v).strip()
            try:
                secs = float(s) * default_unit
            except ValueError:
                pos, secs = 0, 0.0
                for m in _DURATION_RE.finditer(s):
                    if m.start() != pos:
                        break
                    secs += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                    pos = m.end()
                if pos != len(s) or not s:
                    raise ValueError(f"expected a duration like 10s, 500ms or 1m30s, got {v!r}") from None
        if secs < 0:
            raise ValueError(f"expected a duration >= 0, got {v!r}")
        return secs
    return conv


parse_duration = _duration(1.0)  # for command-line flags: the settings' duration syntax, bare numbers in seconds


def _cidr(v: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        iface = ipaddress.ip_interface(str(v).strip())
    except ValueError:
        raise ValueError(f"expected an address with prefix like 10.0.0.1/24, got {v!r}") from None
    if "/" not in str(v):
        raise ValueError(f"expected an address with prefix like 10.0.0.1/24, got {v!r}")
    return iface


def _csv(v: Any) -> tuple[str, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(str(x).strip() for x in v if str(x).strip())
    return tuple(x.strip() for x in str(v).split(",") if x.strip())


def _int_csv(v: Any) -> tuple[int, ...]:
    out = []
    for x in _csv(v):
        try:
            out.append(int(x))
        except ValueError:
            raise ValueError(f"expected a comma list of integers, got {v!r}") from None
    return tuple(out)


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = str(v).strip().lower()
        if s not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return s
    return conv


@dataclass(frozen=True)
class SwitchTarget:
    """One leaf switch this metalcore manages, reached over NETCONF."""
    name: str
    host: str
    port: int = 830
    username: str = ""
    password: str = field(default="", repr=False)
    driver: str = "netconf-leaf"


def _switches(v: Any) -> tuple[SwitchTarget, ...]:
    """From TOML: a list of tables. From the environment: ``name=netconf://user:pass@host:port,...``."""
    if isinstance(v, (list, tuple)) and all(isinstance(x, dict) for x in v):
        out = []
        for t in v:
            try:
                out.append(SwitchTarget(name=str(t["name"]), host=str(t["host"]), port=_port(t.get("port", 830)),
                                        username=str(t.get("username", "")), password=str(t.get("password", "")),
                                        driver=str(t.get("driver", "netconf-leaf"))))
            except KeyError as e:
                raise ValueError(f"switch entry {t.get('name', '?')!r} lacks {e.args[0]!r}") from None
        return tuple(out)
    out = []
    for item in _csv(v):
        name, sep, url = item.partition("=")
        u = urlsplit(url)
        if not sep or not name or u.scheme not in ("netconf", "netconf+ssh") or not u.hostname:
            raise ValueError(f"expected name=netconf://user:password@host:port, got {item!r}")
        out.append(SwitchTarget(name=name, host=u.hostname, port=u.port or 830,
                                username=unquote(u.username or ""), password=unquote(u.password or "")))
    return tuple(out)


# --- the declaration table --------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    name: str                 # attribute name; env name is ENV_PREFIX + name.upper()
    conv: Callable[[Any], Any]
    default: Any              # REQUIRED means: must be given for the stages in `required_by`
    help: str
    required_by: tuple[str, ...] = ()
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


REQUIRED = object()
ALL = STAGES

SETTINGS: tuple[Spec, ...] = (
    # identity of this rack
    Spec("cidr", _cidr, None, "metalcore's address/prefix on the PXE network; its IP goes into "
         "METAL_CORE_ADDRESS on the kernel command line, so a wrong value strands every booting machine.",
         required_by=("pxe", "hammer_proxy")),
    Spec("partition_id", _str, None, "Partition this rack belongs to; names the NSQ topic and goes into "
         "every registration.", required_by=ALL),
    Spec("rack_id", _str, None, "Rack id sent with machine and switch registrations.",
         required_by=("hammer_proxy", "switch")),
    # metalcore's HTTP API for metal-hammer
    Spec("bind_address", _str, "0.0.0.0", "Address the hammer proxy listens on."),
    Spec("port", _port, 4242, "Port of the hammer proxy (metal-core's API for metal-hammer); also the "
         "port in METAL_CORE_ADDRESS on the kernel command line."),
    Spec("hammer_threads", _int_range(8, 4096), 640, "Worker threads of the hammer proxy. Each install "
         "long-poll holds one for up to ~30 s, so this bounds how many machines can wait for an allocation "
         "at once (the rest queue); 640 = 512 waiting machines + room for short calls."),
    Spec("metrics_server_bind_address", _str, "0.0.0.0", "Address of the /metrics endpoints."),
    Spec("metrics_server_port", _port, 2112, "Base port of the /metrics endpoints: stage i of "
         "(pxe, hammer_proxy, nsq_consumer, switch, ipmi) listens on base+i; 0 disables metrics."),
    Spec("log_level", _choice("trace", "debug", "info", "warning", "warn", "error"), "info",
         "Log level; debug also adds DEBUG=1 to the kernel command line of booting machines."),
    Spec("console_logging", _bool, True, "Kept for env-file compatibility with metal-core; logs always go "
         "to stderr (JSON lines unless on a terminal)."),
    # Metal API
    Spec("metal_api_protocol", _choice("http", "https"), "http", "Scheme of the Metal API."),
    Spec("metal_api_ip", _str, "localhost", "Host of the Metal API."),
    Spec("metal_api_port", _port, 8080, "Port of the Metal API."),
    Spec("metal_api_basepath", _str, "", "Base path of the Metal API, e.g. /metal."),
    Spec("hmac_key", _str, None, "metal-api's hmac-edit-key; every Metal API call is signed with it "
         "as user Metal-Edit. Never logged.", required_by=("pxe", "hammer_proxy", "nsq_consumer", "switch",
                                                            "ipmi"), secret=True),
    Spec("metal_api_timeout", _duration(1.0), 15.0, "Timeout of one Metal API call (the wait long-poll "
         "has its own, longer than the server's 30 s)."),
    # NSQ
    Spec("mq_address", _str, "localhost:4161", "nsqlookupd HTTP address(es), comma separated."),
    Spec("mq_ca_cert_file", _str, "", "CA for NSQ TLS; TLS is on when set."),
    Spec("mq_client_cert_file", _str, "", "Client certificate (PEM with key) for NSQ TLS."),
    Spec("mq_loglevel", _str, "info", "Kept for env-file compatibility; pynsq logs through the stage's log."),
    Spec("machine_topic", _str, "", "NSQ topic of machine events; empty means <partition>-machine, as "
         "metal-api names it."),
    Spec("machine_topic_ttl", _duration(1e-3), 30.0, "Machine events older than this are dropped (bare "
         "numbers are milliseconds, as in metal-core): a stale power command must not run late."),
    Spec("mq_channel", _str, "core", "NSQ channel; shared by every metalcore of the partition so that "
         "each event is handled once."),
    Spec("mq_max_in_flight", _int_range(1, 10000), 256, "Machine events handled at once; a free holds its event "
         "until the machine PXE booted (pxe_boot_watchdog), so keep it above the machines freed at once."),
    Spec("mq_requeue_delay", _duration(1.0), 1.0, "First requeue delay of a failed machine event; doubles per "
         "attempt up to 60 s (jittered), so a dead BMC is not hammered and the queue is not stalled."),
    Spec("mq_lookupd_poll_interval", _int_range(1, 3600), 5, "Seconds between nsqlookupd queries; bounds how "
         "long consumption pauses after nsqd restarts or moves (go-nsq in metal-core polled every 5 s)."),
    Spec("boot_device_reset", _bool, False, "Reset the machine after the DISK/PXE commands set the boot "
         "device, as metal-core did until 2022-05 (PR #64 removed it)."),
    Spec("mq_max_attempts", _int_range(1, 1000), 10, "Attempts of one machine event before it is given "
         "up (finished with an error event, a log line and a metric)."),
    Spec("pxe_boot_watchdog", _duration(1.0), 240.0, "After a free/reinstall cycled a machine into PXE, how long "
         "to wait for it to show up PXE booting (its Metal API event log) before cycling it again; the event "
         "stays unfinished meanwhile. 0 turns the watchdog off."),
    Spec("pxe_boot_watchdog_cycles", _int_range(0, 10), 2, "Extra power cycles the PXE boot watchdog may spend "
         "on one event before it gives up (error log, metric, nsq.pxe-watchdog-given-up)."),
    # switch
    Spec("loopback_ip", _str, "10.0.0.11", "Router id / VTEP address of the leaf (kept for compatibility)."),
    Spec("asn", _str, "420000011", "BGP ASN of the leaf (kept for compatibility)."),
    Spec("spine_uplinks", _csv, ("swp31", "swp32"), "Ports to the spines; never reconfigured."),
    Spec("management_gateway", _str, "", "Kept for compatibility."),
    Spec("reconfigure_switch", _bool, False, "Apply switch changes; false is a dry run (diff computed, "
         "logged, published and notified, nothing applied), as in metal-core."),
    Spec("reconfigure_switch_interval", _duration(1.0), 10.0, "Period of the switch reconcile loop."),
    Spec("additional_bridge_vids", _csv, (), "VLAN ids of the bridge that metalcore leaves alone."),
    Spec("additional_bridge_ports", _csv, (), "Ports that metalcore leaves alone."),
    Spec("pxe_vlan_id", _int_range(1, 4094), 4000, "Access VLAN of ports that provision or are free; "
         "must not lie in the tenant range 1001-2000."),
    Spec("switches", _switches, (), "Leaf switches to manage: name=netconf://user:password@host:port,..."),
    Spec("switch_confirm_timeout", _duration(1.0), 60.0, "Confirmed-commit timeout: if metalcore dies "
         "between commit and confirm, the switch rolls back by itself after this long."),
    Spec("switch_test_confirm_delay", _duration(1.0), 0.0, "TEST ONLY: sleep this long between the "
         "confirmed commit and the confirming commit, so a test can kill -9 the stage in that window; "
         "keep 0 in production (a switch change stays unconfirmed that long)."),
    # boot / PXE
    Spec("change_boot_order", _bool, True, "After a successful install, set the BMC's boot device to disk "
         "before finalizing the allocation."),
    Spec("boot_order_timeout", _duration(1.0), 25.0, "How long the hammer proxy waits for the IPMI stage to "
         "set the boot device before it answers the report with an error (and does not finalize); below "
         "metal-hammer's 30 s client timeout so that the hammer gets the reason, not a cut connection."),
    Spec("pxe_interface", _str, "", "Interface the PXE stage watches for DHCP; required by that stage.",
         required_by=("pxe",)),
    Spec("netns", _str, "", "Network namespace (name from `ip netns`) in which the sockets that face the "
         "booting machines are opened (DHCP watch, TFTP, PXE HTTP, hammer proxy); empty = the process's own. "
         "The lab uses it; a rack host normally leaves it empty."),
    Spec("pxe_http_port", _port, 4280, "Port of the PXE stage's HTTP server (iPXE scripts, kernel, initrd)."),
    Spec("pxe_cache_dir", _str, "", "Where the PXE stage caches kernels and initrds it proxies; empty = "
         "<run_dir>/pxe-cache. Needs room for every partition image (an initrd is ~100 MB)."),
    Spec("tftp_port", _port, 69, "Port of the PXE stage's TFTP server."),
    Spec("tftp_root", _str, "/usr/lib/ipxe", "Directory of the iPXE binaries served over TFTP (Debian's "
         "ipxe package)."),
    Spec("efi_boot_file", _choice("ipxe.efi", "snponly.efi"), "ipxe.efi", "iPXE binary for x86-64 UEFI."),
    Spec("boot_fail_open", _bool, True, "When the Metal API cannot be asked whether a machine is allocated: "
         "true boots it into discovery (a running machine would not PXE boot anyway), false stays silent."),
    Spec("boot_decision_cache", _duration(1.0), 5.0, "How long one MAC's boot decision is reused, so a "
         "DHCP retry storm does not flood the Metal API."),
    # IPMI
    Spec("ipmi_concurrency", _int_range(1, 4096), 64, "BMC commands in flight at once, over all BMCs."),
    Spec("ipmi_timeout", _duration(1.0), 20.0, "Timeout of one BMC command including its read-back."),
    Spec("ipmi_attempts", _int_range(1, 100), 3, "Attempts of one BMC command inside one job."),
    # metalcore's own plumbing
    Spec("run_dir", _str, "/run/metalcore", "Directory of the bus sockets (mode 0700)."),
    Spec("supervisor_socket", _str, "", "supervisord's unix socket, read by `metalcore status`; empty "
         "means <run_dir>/supervisor.sock."),
    Spec("job_timeout", _duration(1.0), 120.0, "How long a stage waits for a job's result before it "
         "reports the job failed (the job itself may still be resent)."),
)

_BY_NAME = {s.name: s for s in SETTINGS}
SECRET_FIELDS = tuple(s.name for s in SETTINGS if s.secret)


Settings = dataclasses.make_dataclass(
    "Settings",
    [("stage", str, field(default=""))]
    + [(s.name, Any, field(default=None, repr=not s.secret, metadata={"help": s.help, "env": s.env}))
       for s in SETTINGS],
    frozen=True,
)
Settings.__doc__ = "All settings, typed and validated; one frozen object per stage process."


def _settings_address(self) -> str:
    """METAL_CORE_ADDRESS as metal-hammer expects it: <ip>:<port>, no scheme."""
    ip = self.cidr.ip
    return f"[{ip}]:{self.port}" if ip.version == 6 else f"{ip}:{self.port}"


def _settings_metal_api_url(self) -> str:
    base = self.metal_api_basepath.rstrip("/")
    if base and not base.startswith("/"):
        base = "/" + base
    return f"{self.metal_api_protocol}://{self.metal_api_ip}:{self.metal_api_port}{base}"


def _settings_topic(self) -> str:
    return self.machine_topic or f"{self.partition_id}-machine"


def _settings_metrics_port(self) -> int:
    if not self.metrics_server_port or self.stage not in METRICS_PORT_OFFSET:
        return 0
    return self.metrics_server_port + METRICS_PORT_OFFSET[self.stage]


Settings.metal_core_address = property(_settings_address)
Settings.metal_api_url = property(_settings_metal_api_url)
Settings.topic = property(_settings_topic)
Settings.metrics_port = property(_settings_metrics_port)
Settings.secrets = property(lambda self: tuple(
    v for v in [getattr(self, n) for n in SECRET_FIELDS] + [s.password for s in self.switches] if v))


def default_config_path(environ: Mapping[str, str]) -> str | None:
    path = environ.get(ENV_PREFIX + "CONFIG")
    if path:
        return path
    return "/etc/metalcore/metalcore.toml" if os.path.exists("/etc/metalcore/metalcore.toml") else None


def load(stage: str = "", environ: Mapping[str, str] | None = None, path: str | None = None):
    """Read the settings for ``stage`` ("" = no stage: only defaults are checked)."""
    environ = os.environ if environ is None else environ
    path = path or default_config_path(environ)
    file_values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                file_values = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{ENV_PREFIX}CONFIG: file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{ENV_PREFIX}CONFIG: {path} is not valid TOML: {e}") from None
        # [[switch]] tables are the readable TOML spelling of the switches list
        if "switch" in file_values and "switches" not in file_values:
            file_values["switches"] = file_values.pop("switch")
        unknown = sorted(set(file_values) - set(_BY_NAME))
        if unknown:
            raise ConfigError(f"{path}: unknown setting {unknown[0]!r} (see metalcore/config.py SETTINGS)")
    if stage and stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")

    values: dict[str, Any] = {"stage": stage}
    for spec in SETTINGS:
        if spec.env in environ:
            raw, origin = environ[spec.env], spec.env
        elif spec.name in file_values:
            raw, origin = file_values[spec.name], f"{spec.env} ({spec.name} in {path})"
        else:
            raw, origin = None, spec.env
        if raw is None or (isinstance(raw, str) and raw == "" and spec.default is None):
            if stage in spec.required_by:
                raise ConfigError(f"{spec.env}: required by the {stage} stage but not set ({spec.help})")
            values[spec.name] = spec.default
            continue
        try:
            values[spec.name] = spec.conv(raw)
        except ValueError as e:
            # a converter's message quotes the value: never for a secret
            raise ConfigError(f"{origin}: invalid value (hidden)" if spec.secret else f"{origin}: {e}") from None

    settings = Settings(**values)
    _check_cross_field(settings)
    return settings


def _check_cross_field(s) -> None:
    if 1001 <= s.pxe_vlan_id <= 2000:
        raise ConfigError(f"{ENV_PREFIX}PXE_VLAN_ID: {s.pxe_vlan_id} lies in the tenant VLAN range 1001-2000")
    if s.stage == "switch" and not s.switches:
        raise ConfigError(f"{ENV_PREFIX}SWITCHES: required by the switch stage but not set "
                          "(name=netconf://user:password@host:port,...)")


def hostname() -> str:
    return socket.gethostname()
