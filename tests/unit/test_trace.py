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
