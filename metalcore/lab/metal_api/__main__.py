"""``python -m metalcore.lab.metal_api``: run the Metal API stand-in until SIGTERM/SIGINT.

Prints ``METAL_API_LAB_PORT=<port>`` and ``METAL_API_LAB_URL=<url>`` on stdout once it listens.
Keys come from the environment so they do not show in ``ps``: METAL_API_LAB_VIEW_KEY,
METAL_API_LAB_EDIT_KEY, METAL_API_LAB_ADMIN_KEY (defaults: lab-view-key, lab-edit-key, lab-admin-key).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from metalcore.lab.metal_api.app import DEFAULT_KEYS, LabConfig
from metalcore.lab.metal_api.server import DEFAULT_THREADS, serve


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metalcore.lab.metal_api", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (default): the kernel picks a free port")
    p.add_argument("--partition", default="lab", help="id of the partition the stand-in serves")
    p.add_argument("--imageurl", default="", help="partition bootconfig imageurl (the initrd)")
    p.add_argument("--kernelurl", default="", help="partition bootconfig kernelurl")
    p.add_argument("--commandline", default="", help="partition bootconfig commandline")
    p.add_argument("--nsqd-http", default=None, help="host:port of nsqd's HTTP API to publish machine events to")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="server timeout of the wait long-poll (s)")
    p.add_argument("--hmac-lifetime", type=float, default=30.0, help="max age of X-Date (s), 0 = unchecked")
    p.add_argument("--basepath", default="", help="serve /v1 under this prefix, e.g. /metal")
    p.add_argument("--single-switch", action="store_true",
                   help="accept machines connected to one switch (metal-api demands exactly two)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    a = p.parse_args(argv)
    keys = {"Metal-View": os.environ.get("METAL_API_LAB_VIEW_KEY", DEFAULT_KEYS["Metal-View"]),
            "Metal-Edit": os.environ.get("METAL_API_LAB_EDIT_KEY", DEFAULT_KEYS["Metal-Edit"]),
            "Metal-Admin": os.environ.get("METAL_API_LAB_ADMIN_KEY", DEFAULT_KEYS["Metal-Admin"])}
    config = LabConfig(keys=keys, partition_id=a.partition,
                       bootconfig={"imageurl": a.imageurl, "kernelurl": a.kernelurl, "commandline": a.commandline},
                       nsqd_http=a.nsqd_http, wait_timeout=a.wait_timeout, hmac_lifetime=a.hmac_lifetime,
                       basepath=a.basepath, twin_switches=not a.single_switch)
    signal.signal(signal.SIGTERM, _sigterm)
    serve(a.host, a.port, config, threads=a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
