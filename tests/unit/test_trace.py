from metalcore.cli.trace import link, render


def ev(ts, stream, name, machine_id=None, mac=None, **body):
    e = {"ts": ts, "stream": stream, "name": name, "source": stream, "body": body}
    if machine_id:
        e["machine_id"] = machine_id
    if mac:
        e["mac"] = mac
    return e


def test_links_mac_only_dhcp_events_to_the_machine_id_through_register():
    events = [
        ev(1.0, "dhcp", "discover", mac="52:54:00:00:00:01"),
        ev(1.5, "dhcp", "discover", mac="52:54:00:00:00:99"),  # another machine
        ev(2.0, "hammer", "register", machine_id="m1", macs=["52:54:00:00:00:01"]),
        ev(3.0, "ipmi", "job-done", machine_id="m1"),
    ]
    mine = link(events, "M1")
    assert [e["ts"] for e in mine] == [1.0, 2.0, 3.0]
    assert link(events, "52:54:00:00:00:01") == mine
    text = "\n".join(render(mine))
    assert "DHCP" in text and "register" in text and "BMC" in text
    assert "2.000s" in text  # the BMC step came 2 s after the first DHCP packet


def test_since_keeps_only_recent_lives(tmp_path, capsys):
    import argparse
    import json
    import time

    from metalcore.cli import trace
    now = time.time()
    with open(tmp_path / "events-pxe.jsonl", "w") as f:
        for ts in (now - 7200, now - 60):
            f.write(json.dumps(ev(ts, "dhcp", "discover", mac="52:54:00:00:00:01")) + "\n")
    assert len(trace.load_events(str(tmp_path))) == 2
    assert [e["ts"] for e in trace.load_events(str(tmp_path), now - 600)] == [now - 60]
    p = argparse.ArgumentParser()
    trace.add_parser(p.add_subparsers())
    args = p.parse_args(["trace", "52:54:00:00:00:01", "--since", "10m", "--json"])
    assert args.since == 600.0
    args.run_dir = str(tmp_path)
    assert trace.run(args) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    try:
        p.parse_args(["trace", "x", "--since", "soon"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a bad --since was accepted")
