"""Rack scale: 4 QEMU machines + 100 machines that exist only as BMCs and switch ports, metalcore's five
stages under supervisord (the repo's supervisord.conf), allocated all at once and freed all at once.

    .venv/bin/python bench/bench_rack.py [--qemu 4] [--virtual 100] [--firmware bios]

1. the whole rack up (tests/fixtures_rack.start_rack: full_rack.up_full + supervisord with the lab's settings);
2. the QEMU machines powered on over IPMI, PXE boot through metalcore into discovery (waiting);
3. the BMC-only machines register through the hammer proxy over HTTP, as their initrd would
   (tests/e2e/virtual_hammer.py in the rack namespace), and hold the install long-poll;
4. every machine allocated at once through the stand-in -> time until every one reported, its BMC boot
   device reads disk and its ports on both leaves are in the tenant VRF (netconfd running config);
5. every machine freed at once -> time until every BMC has boot device PXE and exactly one power cycle and
   every port is back in the PXE VLAN; the QEMU machines PXE boot again into discovery.
Needs root (namespaces, the lab's sshd), qemu-system-x86, openipmi, netconfd, like the e2e tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.test_machine_life import BOOT_TIMEOUT, WAITING, rack_scale  # noqa: E402
from tests.fixtures_rack import start_rack, stop_rack  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--qemu", type=int, default=4)
    p.add_argument("--virtual", type=int, default=100)
    p.add_argument("--firmware", default="bios", choices=("bios", "uefi"))
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mcrack-"))
    t0 = time.time()
    total = a.qemu + a.virtual
    rack = start_rack(tmp, machines=a.qemu, firmware=a.firmware, bmc_only=a.virtual, ports_per_switch=total)
    try:
        print(f"rack + stages up: {time.time() - t0:.1f} s ({a.qemu} QEMU, {a.virtual} BMC-only, "
              f"{total} ports per leaf) in {tmp}", flush=True)
        qemu = list(range(1, a.qemu + 1))
        marks = {i: rack.console(i).mark() for i in qemu}
        t1 = time.time()
        for i in qemu:
            rack.power_on(i)
        for i in qemu:
            rack.console(i).wait_for(WAITING, BOOT_TIMEOUT * 2, after=marks[i])
        print(f"QEMU machines powered on -> all in discovery (waiting): {time.time() - t1:.1f} s", flush=True)
        result = rack_scale(rack, qemu=qemu, virtual=list(range(a.qemu + 1, total + 1)), timeout=600)
        print(result["text"], flush=True)
    finally:
        stop_rack(rack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
