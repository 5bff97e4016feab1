"""What every stage process does around its own work: settings, logs, run dir, metrics, bus, heartbeat,
and a graceful stop on SIGTERM (supervisord's stopsignal): stop taking work, drain, exit 0.

A stage module defines a ``Stage`` subclass with ``start()`` (non-blocking: start threads or servers) and
``stop()`` (drain what is in flight), plus ``stats()`` for the heartbeat, and calls :func:`main`.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Callable

from loguru import logger

from metalcore import config, log, metrics
from metalcore.bus import EventPublisher, Heartbeat, prepare_run_dir

EXIT_CONFIG = 2


class Stage:
    name = ""

    def __init__(self, settings, publisher: EventPublisher) -> None:
        self.settings = settings
        self.publisher = publisher

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Drain in-flight work; called once on SIGTERM/SIGINT."""

    def stats(self) -> dict[str, Any]:
        """Vital signs for the heartbeat: at least jobs_in_flight."""
        return {"jobs_in_flight": 0}


def main(stage_cls: type[Stage], argv: list[str] | None = None) -> int:
    name = stage_cls.name
    try:
        settings = config.load(name)
    except config.ConfigError as e:
        # one clear line, before logging exists; supervisord marks the program FATAL after its retries
        print(f"metalcore-{name}: configuration error: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    log.setup(name, settings.log_level, secrets=settings.secrets)
    prepare_run_dir(settings.run_dir)
    port = metrics.serve(settings.metrics_server_bind_address, settings.metrics_port)
    publisher = EventPublisher(settings.run_dir, name)
    stage = stage_cls(settings, publisher)
    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        logger.info("got {}, draining", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    heartbeat = Heartbeat(publisher, lambda: {**stage.stats(), "errors_last_minute": log.errors.count(time.time())})
    try:
        stage.start()
    except Exception as e:
        logger.opt(exception=True).error("{} failed to start: {}", name, e)
        return 1
    heartbeat.start()
    logger.info("{} started (metrics port {}, run dir {})", name, port, settings.run_dir)
    publisher.publish("bus", "stage-started", {"stage": name})
    while not stopping.wait(0.5):
        pass
    heartbeat.stop()
    stage.stop()
    publisher.publish("bus", "stage-stopped", {"stage": name})
    logger.info("{} stopped", name)
    publisher.close()
    return 0


def run(stage_cls: type[Stage]) -> Callable[[], None]:
    """The console-script entry point of a stage."""
    def entry() -> None:
        sys.exit(main(stage_cls))
    return entry
