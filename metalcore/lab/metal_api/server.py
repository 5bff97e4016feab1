"""Run the stand-in in a real WSGI server (waitress) on a real socket, in a thread or as a process.

``LabServer`` owns the waitress server: ``start()`` binds (port 0 = the kernel picks), ``stop()`` wakes
the long-polls (they answer 504) and closes. It also implements the ``down="refused"`` fault: the
listener is closed, so new connections are refused, and reopened on the same port after N seconds.
Waitress threads: every long-poll holds one for up to the wait timeout, so there are plenty.
"""

from __future__ import annotations

import threading
import time

from loguru import logger
from waitress import create_server, wasyncore

from metalcore.lab.metal_api.app import LabConfig, LabState, create_app

__all__ = ["DEFAULT_THREADS", "LabServer", "serve"]

DEFAULT_THREADS = 32  # a rack of 16 machines long-polling at once, plus metalcore's other calls


class LabServer:
    def __init__(self, config: LabConfig, host: str = "127.0.0.1", port: int = 0,
                 threads: int = DEFAULT_THREADS) -> None:
        self.app = create_app(config)
        self.state: LabState = self.app.extensions["metal_api_lab"]
        self.state.refuse_hook = self.refuse_for
        self.host = host
        self.port = port
        self.threads = threads
        self._server = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def url(self) -> str:
        base = "/" + self.state.config.basepath.strip("/") if self.state.config.basepath.strip("/") else ""
        return f"http://{self.host}:{self.port}{base}"

    def start(self) -> "LabServer":
        with self._lock:
            self._server = create_server(self.app, host=self.host, port=self.port, threads=self.threads,
                                         connection_limit=max(100, self.threads * 4),  # one per long-poll + pools
                                         channel_timeout=max(120, int(self.state.config.wait_timeout * 2)))
            self.port = self._server.effective_port
            self._thread = threading.Thread(target=self._server.run, name=f"metal-api-lab:{self.port}",
                                            daemon=True)
            self._thread.start()
        return self

    def _close_server(self) -> None:
        """Listener first (connections refused from here on), then the worker threads, then the
        remaining channels; the closing is done inside waitress' loop thread via its trigger, since
        its channel map is not thread-safe."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        listener_closed = threading.Event()

        def close_listener() -> None:
            wasyncore.dispatcher.close(server)  # the listening socket only; the trigger stays
            listener_closed.set()

        def close_rest() -> None:
            for channel in list(server._map.values()):
                if channel is not server.trigger:
                    channel.close()
            server.trigger.close()

        server.trigger.pull_trigger(close_listener)
        listener_closed.wait(5)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        server.trigger.pull_trigger(close_rest)
        if thread is not None:
            thread.join(timeout=5)

    def refuse_for(self, seconds: float) -> None:
        """Close the listener (connection refused) now-ish, reopen it on the same port after ``seconds``."""
        def run():
            time.sleep(0.2)  # let the /_lab/faults answer leave first
            with self._lock:
                if self._stopped:
                    return
                self._close_server()
            logger.info("metal-api stand-in: refusing connections on port {} for {}s", self.port, seconds)
            time.sleep(seconds)
            with self._lock:
                if self._stopped:
                    return
                self.state.faults.set({"down": None, "down_seconds": 0.0})
            self.start()
        threading.Thread(target=run, name="metal-api-lab-refuse", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self.state.store.close()
            self._close_server()
            self.state.publisher.close()

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(host: str = "127.0.0.1", port: int = 0, config: LabConfig | None = None, *,
          threads: int = DEFAULT_THREADS, ready_line: bool = True) -> None:
    """Run in the foreground until interrupted; print ``METAL_API_LAB_PORT=<port>`` once listening."""
    from metalcore.lab.metal_api.app import DEFAULT_KEYS

    server = LabServer(config or LabConfig(keys=dict(DEFAULT_KEYS)), host, port, threads).start()
    if ready_line:
        print(f"METAL_API_LAB_PORT={server.port}", flush=True)
        print(f"METAL_API_LAB_URL={server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
