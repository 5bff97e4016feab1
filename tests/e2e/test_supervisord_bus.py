"""The foundation under real supervisord and real ZeroMQ: programs, status, tap, jobs across restarts."""

import collections
import os
import signal
import subprocess
import time

from metalcore.bus import JobClient
from tests.fixtures_supervisor import REPO, STAGES

METALCORE = os.path.join(REPO, ".venv/bin/metalcore")

JOB_WORKER = """
[program:jobtest]
command = %(here)s/.venv/bin/python %(here)s/tests/e2e/job_effect_worker.py %(here)s/.run %(here)s/.run/effects {delay}
directory = %(here)s
autostart = true
autorestart = true
startsecs = 0
stopsignal = TERM
stopwaitsecs = 10
stdout_logfile = %(here)s/.run/log/jobtest.log
redirect_stderr = true
"""

BAD_STAGE = """
[program:badstage]
command = %(here)s/.venv/bin/python -m stages.ipmi
directory = %(here)s
environment = METAL_CORE_PORT="http"
autostart = false
autorestart = true
startsecs = 1
startretries = 1
stdout_logfile = %(here)s/.run/log/badstage.log
redirect_stderr = true
"""


def _cli(sup, *args, timeout=30):
    env = dict(sup.env, METAL_CORE_CONFIG=os.path.join(sup.run_dir, "metalcore.toml"))
    return subprocess.run([METALCORE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_all_five_stages_run_heartbeat_and_answer_status(supervisor_factory):
    sup = supervisor_factory()
    for stage in STAGES:
        sup.wait_state(stage, "RUNNING", timeout=30)
    out = _cli(sup, "status")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    for stage in STAGES:
        assert "RUNNING" in lines[stage] and "s ago" in lines[stage], out.stdout
    # a stage restarted alone does not disturb the others
    before = sup.states()
    res = sup.ctl("restart", "metalcore:switch")
    assert res.returncode == 0, res.stdout + res.stderr
    after = sup.states()
    assert after["switch"]["pid"] != before["switch"]["pid"]
    assert all(after[s]["pid"] == before[s]["pid"] for s in STAGES if s != "switch")


def test_tap_shows_messages_of_a_running_stage(supervisor_factory):
    sup = supervisor_factory()
    sup.wait_state("ipmi", "RUNNING")
    out = _cli(sup, "tap", "heartbeat", "--json", "--count", "3", "--timeout", "10")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 3, out.stdout + out.stderr
    assert all('"stream": "heartbeat"' in line for line in lines)
    out = _cli(sup, "tap", "heartbeat", "--count", "1", "--timeout", "10")
    assert "heartbeat." in out.stdout


def test_a_bad_setting_ends_fatal_with_the_reason_in_its_log(supervisor_factory):
    sup = supervisor_factory(BAD_STAGE)
    sup.ctl("start", "badstage")
    sup.wait_state("badstage", "FATAL", timeout=30)
    assert "configuration error: METAL_CORE_PORT: expected an integer 0..65535, got 'http'" in sup.log("badstage")


def _run_jobs_through(sup, disrupt, n=1000):
    run = sup.run_dir
    client = JobClient(run, "jobtest", "test")
    try:
        t0 = time.monotonic()
        futures = [client.submit("noop", {"n": i}) for i in range(n)]
        # strike when about a quarter is done: most jobs are then queued, some running
        deadline = time.monotonic() + 60
        while sum(f.done() for f in futures) < n // 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        unfinished = sum(not f.done() for f in futures)
        disrupt(sup)
        results = [f.result(120) for f in futures]
        elapsed = time.monotonic() - t0
    finally:
        client.close()
    assert all(r.ok for r in results)
    assert sorted(r.body["n"] for r in results) == list(range(n))  # 0 lost
    ids = {r.job_id for r in results}

    def count(path):  # the worker appends; earlier rounds' jobs are not ours
        with open(path) as f:
            return collections.Counter(w for w in (line.split()[0] for line in f) if w in ids)
    effects = os.path.join(run, "effects")
    assert unfinished > n // 2, f"the disruption came too late to test anything ({unfinished} unfinished)"
    return elapsed, count(effects), count(effects + ".executions"), client.resent


def test_1000_jobs_survive_restart_and_kill9_of_the_worker(supervisor_factory):
    # the worker takes 2 ms per job, so the restart and the kill land while most jobs are unfinished
    sup = supervisor_factory(JOB_WORKER.format(delay="0.002"))
    sup.wait_state("jobtest", "RUNNING")

    def restart(sup):
        res = sup.ctl("restart", "jobtest")
        assert res.returncode == 0, res.stdout + res.stderr

    def kill9(sup):
        os.kill(sup.states()["jobtest"]["pid"], signal.SIGKILL)

    for disrupt in (restart, kill9):
        elapsed, applied, executed, resent = _run_jobs_through(sup, disrupt)
        assert len(applied) == 1000, f"{disrupt.__name__}: {len(applied)} effects"
        dups = sum(c - 1 for c in applied.values())
        reruns = sum(c - 1 for c in executed.values())
        print(f"{disrupt.__name__}: 1000 jobs in {elapsed:.2f} s, resent {resent}, effects applied twice: "
              f"{dups}, handler reached again: {reruns}")
        assert dups == 0, f"{disrupt.__name__}: {dups} jobs applied twice"
        # a job reaches its handler again only if the worker died between its effect and its journal
        # line; that can hit at most the jobs running at that moment (the worker's concurrency, 8)
        assert reruns <= 8, f"{disrupt.__name__}: {reruns} jobs ran twice"
