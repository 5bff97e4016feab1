import io
import json

from loguru import logger

from metalcore import log


def test_json_lines_carry_context_and_hide_secrets():
    out = io.StringIO()
    log.setup("ipmi", "info", secrets=["s3cr3t-key", "bmcpass"], stream=out, json_lines=True)
    logger.bind(machine_id="m1", mac="aa:bb", trace_id="t1").info("login with s3cr3t-key failed")
    logger.bind(password="bmcpass").warning("retry")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["stage"] == "ipmi" and lines[0]["machine_id"] == "m1" and lines[0]["mac"] == "aa:bb"
    assert lines[0]["trace_id"] == "t1" and isinstance(lines[0]["pid"], int)
    assert "s3cr3t-key" not in out.getvalue() and "bmcpass" not in out.getvalue()
    assert lines[0]["msg"] == "login with *** failed"


def test_error_counter_window():
    c = log.ErrorCounter(window=60)
    c.add(100.0)
    c.add(150.0)
    assert c.count(155.0) == 2
    assert c.count(200.0) == 1
