"""A job worker run under supervisord by the bus tests: each job's effect is one line in an effects file.

The effect is keyed by job id (the line carries it), so the test can count how often each job's effect
was applied, which is exactly what the job journal is meant to keep at one.
"""

import os
import signal
import sys
import threading
import time

from metalcore import log
from metalcore.bus import EventPublisher, JobWorker

STAGE = "jobtest"  # its own socket name, so it never collides with the ipmi stage's worker


def main() -> int:
    run_dir, effects = sys.argv[1], sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    log.setup("testworker", "info")
    lock = threading.Lock()
    out = open(effects, "a", buffering=1)

    def handler(env):
        if delay:
            time.sleep(delay)
        with lock:
            out.write(f"{env.id} {os.getpid()}\n")
        return {"n": env.body.get("n")}

    pub = EventPublisher(run_dir, STAGE)
    worker = JobWorker(run_dir, STAGE, handler, concurrency=8, publisher=pub).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    worker.stop(drain_timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
