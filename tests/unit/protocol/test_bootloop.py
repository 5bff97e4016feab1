"""Boot-loop detector with an explicit clock."""

import pytest

from metalcore.protocol.bootloop import BootLoopDetector, BootLoopWarning

MAC = "aa:bb:cc:dd:ee:ff"


def test_warns_once_when_count_exceeds_limit_in_window():
    d = BootLoopDetector(max_boots=3, window=600)
    assert [d.record_boot(MAC, t) for t in (0, 100, 200)] == [None, None, None]
    assert d.record_boot(MAC, 300) == BootLoopWarning(MAC, 4, 600)
    assert d.record_boot(MAC, 310) is None  # already warned
    assert d.boots(MAC, 310) == 5


def test_sliding_window_forgets_old_boots_and_rearms():
    d = BootLoopDetector(max_boots=2, window=60)
    d.record_boot(MAC, 0)
    d.record_boot(MAC, 30)
    assert d.record_boot(MAC, 61) is None  # the boot at 0 left the window
    assert d.record_boot(MAC, 62) == BootLoopWarning(MAC, 3, 60)
    # quiet for a window: counting starts again and the warning re-arms
    assert d.record_boot(MAC, 1000) is None and d.boots(MAC, 1000) == 1
    d.record_boot(MAC, 1001)
    assert d.record_boot(MAC, 1002) == BootLoopWarning(MAC, 3, 60)


def test_registration_resets_and_macs_are_independent():
    d = BootLoopDetector(max_boots=1, window=60)
    d.record_boot(MAC, 0)
    d.registered(MAC)
    assert d.record_boot(MAC, 1) is None
    assert d.record_boot("11:22:33:44:55:66", 1) is None
    assert d.record_boot(MAC, 2) == BootLoopWarning(MAC, 2, 60)


def test_memory_is_bounded_and_prune():
    d = BootLoopDetector(max_boots=1, window=60, max_macs=2)
    for i in range(5):
        d.record_boot(f"m{i}", 0)
    assert d.boots("m0", 0) == 0 and d.boots("m4", 0) == 1
    d.prune(100)
    assert d.boots("m4", 100) == 0


def test_bad_parameters():
    with pytest.raises(ValueError):
        BootLoopDetector(max_boots=0)
