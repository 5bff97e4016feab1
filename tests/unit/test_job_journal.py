from metalcore.bus import Journal


def test_journal_survives_reopen_and_torn_lines(tmp_path):
    path = str(tmp_path / "j")
    j = Journal(path)
    j.add("a", {"ok": True, "result": {"x": 1}})
    j.add("b", {"ok": False, "error": "bmc down"})
    j.close()
    with open(path, "a") as f:
        f.write('{"id": "c", "reply": {"ok"')  # what a kill -9 mid-write leaves
    j2 = Journal(path)
    assert j2.done == {"a": {"ok": True, "result": {"x": 1}}, "b": {"ok": False, "error": "bmc down"}}
