"""Two (or more) leaf switches: one netconfd (yuma123) per switch behind one private sshd.

Layout under ``root`` (the lab's switches dir):
    sshd_config, ssh_host_ed25519_key, sshd.log      one sshd on 127.0.0.1, one port per switch
    <name>/netconfd.conf, startup-cfg.xml, netconfd.log, backup-cfg.xml
    $TMPDIR/mcl-nc-XXXX/<name>.sock                   netconfd's socket (see start() for why)

netconf-subsystem finds a switch's netconfd from the SSH port the client dialled
(``--ncxserver-sockname=<port>@<sock>``, NETCONF gotcha 5), and each netconfd accepts only its
own port (``port`` list, gotcha 6).  The model is our own module metalcore-leaf
(yang/metalcore-leaf.yang, docs/leaf-yang.md); the ietf-interfaces SIL is not loaded (gotcha 4).

netconfd runs with ``with-startup false``: every commit is written back to startup-cfg.xml, so
a stopped and restarted netconfd comes back with its last committed config, like a switch.

Client helpers (``connect``, ``running_config``) patch ncclient's TICK (gotcha 1: ~100 ms per
RPC otherwise).  Never ``validate`` the candidate before ``commit`` (gotcha 2), and remember
that a confirmed commit only rolls back while netconfd is idle (gotcha 3).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from metalcore.lab import procs
from metalcore.lab.ports import HOST, free_tcp_ports, tcp_accepts
from metalcore.lab.procs import LabError, ProcRecord

NS = "urn:metalcore:lab:leaf"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
YANG = Path(__file__).resolve().parent / "yang" / "metalcore-leaf.yang"
NETCONF_USER = "mcnetconf"
NETCONF_PASSWORD = "mcnetconf-lab"
PXE_VLAN = 4000
PXE_VNI = 104000
MACHINE_MTU = 9000
UPLINK_MTU = 9216
INSTALL_HINT = "scripts/install-system-packages (as root)"
# A unix socket path must fit sockaddr_un.sun_path (108 bytes with the NUL).
MAX_SOCK_PATH = 100


def port_mac(switch_index: int, port_number: int) -> str:
    """Deterministic, locally administered MAC of switch ``switch_index`` (1-based) port swpN."""
    return "02:4c:46:%02x:%02x:%02x" % (switch_index & 0xFF, (port_number >> 8) & 0xFF, port_number & 0xFF)


def default_uplinks(ports_per_switch: int) -> tuple[str, str]:
    """swp31/swp32 (metal-core's METAL_CORE_SPINE_UPLINKS default) unless machine ports reach them."""
    a = max(31, ports_per_switch + 1)
    return f"swp{a}", f"swp{a + 1}"


def seed_config_xml(hostname: str, switch_index: int, ports_per_switch: int,
                    uplinks: tuple[str, ...]) -> str:
    """The startup datastore: every machine port an access port in the PXE VLAN, uplinks routed."""
    rows = [f"<hostname>{hostname}</hostname>",
            f"<vlan><id>{PXE_VLAN}</id><name>pxe</name><vni>{PXE_VNI}</vni></vlan>",
            "<vrf><name>default</name></vrf>"]
    for k in range(1, ports_per_switch + 1):
        rows.append(
            f"<port><name>swp{k}</name><mac>{port_mac(switch_index, k)}</mac>"
            f"<admin-state>up</admin-state><mtu>{MACHINE_MTU}</mtu><mode>access</mode>"
            f"<access-vlan>{PXE_VLAN}</access-vlan></port>")
    for name in uplinks:
        k = int(name[3:])
        rows.append(
            f"<port><name>{name}</name><mac>{port_mac(switch_index, k)}</mac>"
            f"<admin-state>up</admin-state><mtu>{UPLINK_MTU}</mtu><mode>routed</mode></port>")
    body = "".join(rows)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<config xmlns="{NC_NS}">'
            f'<switch xmlns="{NS}">{body}</switch></config>\n')


def ensure_netconf_user(user: str = NETCONF_USER, password: str = NETCONF_PASSWORD) -> None:
    """The NETCONF login must be a system user (sshd password auth); create it if we are root."""
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise LabError(f"system user {user!r} for NETCONF is missing and we are not root; "
                       f"run {INSTALL_HINT}")
    try:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", user], check=True, capture_output=True)
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise LabError(f"cannot create NETCONF user {user!r} ({e}); run {INSTALL_HINT}") from None


@dataclass
class Switch:
    """One leaf switch as a client sees it (plus where its netconfd lives)."""

    name: str
    index: int
    host: str
    port: int
    username: str
    password: str
    dir: str
    sock: str
    ports: list[str]
    uplinks: list[str]
    proc: ProcRecord | None = None

    def port_mac(self, port_name: str) -> str:
        return port_mac(self.index, int(port_name[3:]))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["proc"] = self.proc.to_dict() if self.proc else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Switch":
        d = dict(d)
        d["proc"] = ProcRecord.from_dict(d["proc"]) if d.get("proc") else None
        return cls(**d)


@dataclass
class SwitchLab:
    """The switches of one lab and their shared sshd."""

    root: Path
    names: tuple[str, ...] = ("leaf01", "leaf02")
    ports_per_switch: int = 8
    uplinks: tuple[str, ...] | None = None
    host: str = HOST
    username: str = NETCONF_USER
    password: str = NETCONF_PASSWORD
    switches: dict[str, Switch] = field(default_factory=dict)
    sshd: ProcRecord | None = None
    sock_dir: str | None = None

    def __post_init__(self):
        self.root = Path(self.root)
        if self.uplinks is None:
            self.uplinks = default_uplinks(self.ports_per_switch)

    # -- start -----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        netconfd = procs.require_binary("netconfd", f"{INSTALL_HINT} (Debian package netconfd)")
        subsystem = procs.require_binary("/usr/sbin/netconf-subsystem",
                                         f"{INSTALL_HINT} (Debian package netconfd)")
        sshd = procs.require_binary("/usr/sbin/sshd", f"{INSTALL_HINT} (Debian package openssh-server)")
        keygen = procs.require_binary("ssh-keygen", f"{INSTALL_HINT} (Debian package openssh-client)")
        if os.geteuid() != 0:
            raise LabError("the switch lab runs a private sshd with password auth: it must run as root")
        ensure_netconf_user(self.username, self.password)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation dir
        self.root.mkdir(parents=True, exist_ok=True)
        ports = free_tcp_ports(len(self.names), self.host)
        # netconf-subsystem runs as the NETCONF user and must reach netconfd's socket: the run dir
        # may sit under a 0700 dir (pytest's tmp dirs do) or be too deep for sun_path, so the
        # sockets live in a short world-traversable dir of their own (removed by stop()).
        if not self.sock_dir:
            self.sock_dir = tempfile.mkdtemp(prefix="mcl-nc-")
            os.chmod(self.sock_dir, 0o711)
        for i, (name, port) in enumerate(zip(self.names, ports), start=1):
            d = self.root / name
            sock = Path(self.sock_dir) / f"{name}.sock"
            if len(str(sock)) > MAX_SOCK_PATH:
                raise LabError(f"unix socket path {sock} exceeds {MAX_SOCK_PATH} bytes; set TMPDIR shorter")
            machine_ports = [f"swp{k}" for k in range(1, self.ports_per_switch + 1)]
            self.switches[name] = Switch(name=name, index=i, host=self.host, port=port,
                                         username=self.username, password=self.password,
                                         dir=str(d), sock=str(sock), ports=machine_ports,
                                         uplinks=list(self.uplinks))
            d.mkdir(parents=True, exist_ok=True)
            (d / "startup-cfg.xml").write_text(
                seed_config_xml(name, i, self.ports_per_switch, tuple(self.uplinks)))
            (d / "netconfd.conf").write_text(self._netconfd_conf(self.switches[name]))
        key = self.root / "ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.root / "sshd_config").write_text(self._sshd_conf(subsystem, key))
        for sw in self.switches.values():
            self._spawn_netconfd(sw, netconfd)
        self.sshd = procs.spawn("sshd", [sshd, "-D", "-f", str(self.root / "sshd_config"),
                                         "-E", str(self.root / "sshd.log")],
                                self.root, self.root / "sshd.out")
        for sw in self.switches.values():
            self._wait_netconfd(sw, timeout)
        try:
            procs.wait_for(lambda: all(tcp_accepts(s.port, self.host) for s in self.switches.values()),
                           timeout, what="sshd to listen")
        except LabError as e:
            raise LabError(f"{e}\n{procs.log_tail(self.root / 'sshd.log')}") from None
        # One real NETCONF hello per switch: proves user, password, sshd and socket mapping.
        with ThreadPoolExecutor(len(self.switches)) as ex:
            list(ex.map(self._hello, self.switches.values()))

    def _hello(self, sw: Switch, attempts: int = 3) -> None:
        # Retried with a new session: once (in ~100 start-ups, on a loaded machine) the first RPC
        # to a fresh netconfd went unanswered (ncclient "timed out while waiting for an rpc reply").
        err: Exception | None = None
        for _ in range(attempts):
            try:
                with connect(sw, timeout=10) as m:
                    m.timeout = 5
                    m.get_config("running", filter=("subtree", f'<switch xmlns="{NS}"><hostname/></switch>'))
                return
            except Exception as e:  # noqa: BLE001 - reported below with the peer's logs
                err = e
                if not procs.is_running(sw.proc):
                    break
        raise LabError(f"NETCONF hello to {sw.name} at {sw.host}:{sw.port} as {sw.username} failed: "
                       f"{err!r}; check the user's password (run {INSTALL_HINT}) and "
                       f"{sw.dir}/netconfd.log, {self.root}/sshd.log")

    def _netconfd_conf(self, sw: Switch) -> str:
        return "\n".join([
            "netconfd {",
            f"  module {YANG}",
            f"  ncxserver-sockname {sw.sock}",
            f"  startup {sw.dir}/startup-cfg.xml",
            f"  superuser {self.username}",
            f"  port {sw.port}",
            "  target candidate",
            "  with-startup false",
            f"  log {sw.dir}/netconfd.log",
            "  log-level info",
            "}", ""])

    def _sshd_conf(self, subsystem: str, key: Path) -> str:
        maps = " ".join(f"--ncxserver-sockname={s.port}@{s.sock}" for s in self.switches.values())
        lines = [f"Port {s.port}" for s in self.switches.values()] + [
            f"ListenAddress {self.host}",
            f"HostKey {key}",
            f"PidFile {self.root}/sshd.pid",
            "UsePAM no",
            "UseDNS no",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication no",
            "PermitRootLogin no",
            f"AllowUsers {self.username}",
            "StrictModes no",
            # Tests open many sessions at once; the default 10:30:100 starts dropping at 10 (gotcha 10).
            "MaxStartups 200:30:400",
            "MaxSessions 100",
            "LoginGraceTime 30",
            "LogLevel INFO",
            f"Subsystem netconf {subsystem} {maps}",
            ""]
        return "\n".join(lines)

    def _spawn_netconfd(self, sw: Switch, netconfd: str | None = None) -> None:
        netconfd = netconfd or procs.require_binary("netconfd", f"{INSTALL_HINT} (Debian package netconfd)")
        Path(sw.sock).unlink(missing_ok=True)  # a stale socket from a killed run blocks start-up
        # netconfd keeps a transaction-id file in $HOME/.yuma: two netconfds sharing it fail at
        # start-up ("Read txid file failed"), so each switch gets its own HOME.
        env = {**os.environ, "HOME": sw.dir}
        sw.proc = procs.spawn(f"netconfd-{sw.name}", [netconfd, f"--config={sw.dir}/netconfd.conf"],
                              sw.dir, Path(sw.dir) / "netconfd.out", env=env)

    def _wait_netconfd(self, sw: Switch, timeout: float) -> None:
        def up():
            if not procs.is_running(sw.proc):
                raise LabError(f"netconfd for {sw.name} exited at start:\n"
                               f"{procs.log_tail(Path(sw.dir) / 'netconfd.log')}\n"
                               f"{procs.log_tail(Path(sw.dir) / 'netconfd.out')}")
            return os.path.exists(sw.sock)
        procs.wait_for(up, timeout, what=f"netconfd socket of {sw.name}")

    # -- per-switch faults -----------------------------------------------------------------
    def stop_switch(self, name: str) -> None:
        """Stop the switch's netconfd (sshd stays: clients see the session close / refused)."""
        sw = self.switches[name]
        if sw.proc:
            procs.stop(sw.proc)

    def start_switch(self, name: str, timeout: float = 10.0) -> None:
        """Start a stopped switch's netconfd again (same port, same datastore)."""
        sw = self.switches[name]
        if sw.proc and procs.is_running(sw.proc):
            return
        self._spawn_netconfd(sw)
        self._wait_netconfd(sw, timeout)

    def pause_switch(self, name: str) -> None:
        """SIGSTOP the netconfd: sessions hang instead of failing fast."""
        procs.pause(self.switches[name].proc)

    def resume_switch(self, name: str) -> None:
        procs.resume(self.switches[name].proc)

    def all_procs(self) -> list[ProcRecord]:
        return [s.proc for s in self.switches.values() if s.proc] + ([self.sshd] if self.sshd else [])

    def stop(self) -> None:
        procs.stop_many(self.all_procs())
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the socket dir (after the processes are stopped)."""
        if self.sock_dir:
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    # -- state -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"root": str(self.root), "names": list(self.names), "ports_per_switch": self.ports_per_switch,
                "uplinks": list(self.uplinks), "host": self.host, "username": self.username,
                "sshd": self.sshd.to_dict() if self.sshd else None, "sock_dir": self.sock_dir,
                "switches": {n: s.to_dict() for n, s in self.switches.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "SwitchLab":
        lab = cls(root=Path(d["root"]), names=tuple(d["names"]), ports_per_switch=d["ports_per_switch"],
                  uplinks=tuple(d["uplinks"]), host=d["host"], username=d["username"])
        lab.sshd = ProcRecord.from_dict(d["sshd"]) if d.get("sshd") else None
        lab.sock_dir = d.get("sock_dir")
        lab.switches = {n: Switch.from_dict(s) for n, s in d["switches"].items()}
        if lab.switches:
            lab.password = next(iter(lab.switches.values())).password
        return lab


# -- client helpers (ncclient) -------------------------------------------------------------
def connect(sw: Switch, timeout: float = 10.0):
    """An ncclient manager session to ``sw`` (use as a context manager)."""
    import ncclient.transport.session as nts
    from ncclient import manager

    nts.TICK = 0.001  # NETCONF gotcha 1: the default 0.1 s adds ~100 ms to every RPC
    return manager.connect(host=sw.host, port=sw.port, username=sw.username, password=sw.password,
                           hostkey_verify=False, allow_agent=False, look_for_keys=False,
                           timeout=timeout)


@dataclass
class RunningConfig:
    """A switch's running datastore: the raw XML and the parsed metalcore-leaf content."""

    xml: str
    hostname: str | None
    ports: dict[str, dict]
    vlans: dict[int, dict]
    vrfs: dict[str, dict]


def parse_config(xml: str) -> RunningConfig:
    """Parse a <data>/<config> document holding a metalcore-leaf <switch>."""
    from lxml import etree

    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    q = lambda tag: f"{{{NS}}}{tag}"  # noqa: E731
    sw = root if root.tag == q("switch") else root.find(f".//{q('switch')}")

    def leaves(el) -> dict:
        out = {}
        for c in el:
            if not isinstance(c.tag, str):
                continue
            k = etree.QName(c).localname
            v = (c.text or "").strip()
            out[k] = int(v) if k in ("id", "mtu", "vni", "access-vlan") and v.isdigit() else v
        return out

    ports, vlans, vrfs, hostname = {}, {}, {}, None
    if sw is not None:
        h = sw.find(q("hostname"))
        hostname = h.text if h is not None else None
        for p in sw.findall(q("port")):
            d = leaves(p)
            ports[d["name"]] = d
        for v in sw.findall(q("vlan")):
            d = leaves(v)
            vlans[d["id"]] = d
        for v in sw.findall(q("vrf")):
            d = leaves(v)
            vrfs[d["name"]] = d
    return RunningConfig(xml=xml, hostname=hostname, ports=ports, vlans=vlans, vrfs=vrfs)


def running_config(sw: Switch, timeout: float = 10.0) -> RunningConfig:
    """Read ``sw``'s running config over NETCONF (a fresh session) and parse it."""
    with connect(sw, timeout) as m:
        reply = m.get_config("running", filter=("subtree", f'<switch xmlns="{NS}"/>'))
        return parse_config(reply.data_xml)


def config_element(body: str) -> str:
    """Wrap metalcore-leaf ``body`` (the inside of <switch>) as an edit-config <config>."""
    return f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><switch xmlns="{NS}">{body}</switch></config>'
