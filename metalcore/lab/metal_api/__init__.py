"""The Metal API stand-in: metal-api @56e4775d as far as metalcore uses it, on a real socket.

    from metalcore.lab.metal_api import LabConfig, LabServer, MetalAPILab
    with LabServer(LabConfig(keys={...}, partition_id="lab", nsqd_http="127.0.0.1:4151")) as srv:
        lab = MetalAPILab(srv.url, keys)          # HTTP handle: calls(), set_faults(), allocate(), free() ...

or from another process: ``python -m metalcore.lab.metal_api --port 0 --partition lab`` (prints
``METAL_API_LAB_PORT=<port>``). Modules: app (Flask routes + dispatcher), store (state and metal-api's side
effects), schema (swagger checks), events (NSQ machine events), recorder (calls, violations, faults),
server (waitress), handle (the test-side client).
"""

from metalcore.lab.metal_api.app import DEFAULT_KEYS, LabConfig, LabState, create_app
from metalcore.lab.metal_api.handle import MetalAPILab, spawn
from metalcore.lab.metal_api.server import LabServer, serve

__all__ = ["DEFAULT_KEYS", "LabConfig", "LabServer", "LabState", "MetalAPILab", "create_app", "serve", "spawn"]
