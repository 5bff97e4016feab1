import socket
import subprocess
import uuid

import pytest

from metalcore.net.netns import in_netns


def test_socket_opened_in_a_namespace_lives_there():
    name = "mc-t-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with in_netns(name):
            inside = socket.socket()
            inside.bind(("127.0.0.1", 0))
            inside.listen()
        port = inside.getsockname()[1]
        ss = subprocess.run(["ip", "netns", "exec", name, "ss", "-ltnH"], capture_output=True, text=True).stdout
        assert f":{port}" in ss
        ss_host = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port} " not in ss_host
        inside.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_missing_namespace_is_a_clear_error():
    with pytest.raises(OSError, match="does not exist"):
        with in_netns("mc-no-such-ns"):
            pass
