"""A job worker run under supervisord by the bus tests.

Each job's effect is stated as a target state, as the real handlers' are ("power on", not "toggle"):
"job <id> is applied", one line in the effects file, written only when it is not there yet. A second file
counts executions of the handler, so the test sees both: effects applied exactly once, and how many
times a job reached a handler again (after a kill -9 between a job's effect and its journal line).
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
    applied = set()
    if os.path.exists(effects):
        with open(effects) as f:
            applied = {line.split()[0] for line in f if line.strip()}
    out = open(effects, "a", buffering=1)
    executions = open(effects + ".executions", "a", buffering=1)

    def handler(env):
        if delay:
            time.sleep(delay)
        with lock:
            executions.write(f"{env.id} {os.getpid()}\n")
            if env.id not in applied:  # the target state: already there -> nothing to do
                applied.add(env.id)
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
