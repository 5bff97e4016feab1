"""pyghmi's two global session locks are one re-entrant lock once metalcore.ipmi.session is imported (it takes
them in both orders; see the comment in session.py)."""

import threading

from pyghmi.ipmi.private import session as pyghmi_session
from pyghmi.ipmi.private import util as pyghmi_util

import metalcore.ipmi.session  # noqa: F401  (the import does the aliasing)


def test_one_lock_for_waiting_and_keepalive():
    assert pyghmi_session.KEEPALIVE_SESSIONS is pyghmi_session.WAITING_SESSIONS


def test_opposite_orders_do_not_deadlock():
    a, b = pyghmi_session.WAITING_SESSIONS, pyghmi_session.KEEPALIVE_SESSIONS

    def take(first, second):
        for _ in range(20000):
            with pyghmi_util.protect(first):
                with pyghmi_util.protect(second):
                    pass
    ts = [threading.Thread(target=take, args=(a, b)), threading.Thread(target=take, args=(b, a))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert not any(t.is_alive() for t in ts)
