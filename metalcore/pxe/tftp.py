"""Read-only TFTP for the iPXE binaries (tftpy), for PXE ROMs that cannot fetch over HTTP.

What Debian's ``ipxe`` package ships (``dpkg -L ipxe``): /usr/lib/ipxe/undionly.kpxe (BIOS, chained
through the ROM's UNDI), undionly.kkpxe, ipxe.pxe, ipxe.efi and snponly.efi (x86-64 UEFI), ipxe.lkrn,
ipxe.iso. ``settings.tftp_root`` points there by default.

tftpy serves files under its root by itself and also accepts uploads (WRQ writes into the root). So it
gets an empty private root, uploads are refused (``upload_open`` returns None -> access violation), and
every read goes through :meth:`TftpServer.open_for_read`, which resolves the name inside
``tftp_root`` (symlinks resolved too) and refuses anything that lands outside it. That is also where the
transfers are counted.

The server's sockets (the listening one and one per transfer) are all created by the thread that runs
tftpy's loop, which enters the rack namespace for its whole life (setns acts on the calling thread).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

import tftpy
from loguru import logger

from metalcore.net.netns import in_netns
from metalcore.pxe.metrics import PxeMetrics

__all__ = ["TftpServer", "resolve_inside"]

logging.getLogger("tftpy").setLevel(logging.WARNING)  # tftpy logs every block at INFO/DEBUG


def resolve_inside(root: str | os.PathLike, name: str) -> Path | None:
    """The file ``name`` names under ``root``, or None if it is not a regular file inside the root."""
    if "\0" in name:
        return None
    base = Path(root).resolve()
    try:
        target = (base / name.lstrip("/")).resolve()
    except (OSError, RuntimeError):
        return None
    if base not in target.parents or not target.is_file():
        return None
    return target


class TftpServer:
    def __init__(self, root: str, netns: str, bind_ip: str, port: int, metrics: PxeMetrics,
                 timeout: float = 5.0) -> None:
        self.root = root
        self.netns = netns
        self.bind_ip = bind_ip
        self.port = port
        self.metrics = metrics
        self.timeout = timeout
        self.served = 0
        self._empty = tempfile.mkdtemp(prefix="metalcore-tftp-")
        os.chmod(self._empty, 0o555)
        self._server = tftpy.TftpServer(self._empty, dyn_file_func=self.open_for_read,
                                        upload_open=self._refuse_upload)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pxe-tftp", daemon=True)

    def open_for_read(self, name: str, raddress: str = "", rport: int = 0):
        path = resolve_inside(self.root, name)
        log = logger.bind(peer=f"{raddress}:{rport}")
        if path is None:
            exists_outside = not name.startswith("/") and ".." not in name
            self.metrics.tftp.labels("not_found" if exists_outside else "refused").inc()
            log.info("TFTP read of {!r} refused: not a file inside {}", name, self.root)
            return None
        self.metrics.tftp.labels("served").inc()
        self.metrics.tftp_bytes.inc(path.stat().st_size)
        self.served += 1
        log.info("TFTP read of {} by {}", path.name, raddress)
        return open(path, "rb")

    def _refuse_upload(self, path: str, context) -> None:
        self.metrics.tftp.labels("upload_refused").inc()
        logger.warning("TFTP upload of {!r} from {} refused: the server is read-only", path, context.host)
        return None

    def start(self, timeout: float = 5.0) -> "TftpServer":
        self._thread.start()
        if not self._server.is_running.wait(timeout):
            raise RuntimeError(f"TFTP server did not start: {self._error}")
        self.port = self._server.listenport
        return self

    def _run(self) -> None:
        try:
            with in_netns(self.netns):
                self._server.listen(self.bind_ip, self.port, timeout=self.timeout)
        except BaseException as e:  # noqa: BLE001 - reported by start() and the log
            self._error = e
            logger.error("TFTP server on {}:{} stopped: {}", self.bind_ip, self.port, e)

    def stop(self) -> None:
        if self._server.is_running.is_set():
            self._server.stop(now=True)
        self._thread.join(3)
        try:
            os.rmdir(self._empty)
        except OSError:
            pass
