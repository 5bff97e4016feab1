"""The pxe stage: watch DHCP on the PXE link, answer PXE clients (ProxyDHCP, port 4011), serve iPXE
over TFTP and the per-MAC script, kernel and initrd over HTTP. The work is in metalcore/pxe/."""

import threading

from loguru import logger

from metalcore.bus import EventSubscriber
from metalcore.clients.metal_api import MetalAPIClient
from metalcore.pxe.service import PxeService
from metalcore.stage import Stage, run


class PxeStage(Stage):
    name = "pxe"

    def start(self) -> None:
        s = self.settings
        self.metal_api = MetalAPIClient(s.metal_api_url, s.hmac_key, timeout=s.metal_api_timeout)
        self.service: PxeService | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._open, name="pxe-open", daemon=True).start()
        threading.Thread(target=self._listen, name="pxe-bus", daemon=True).start()

    def _open(self) -> None:
        """Open the sockets; if the interface, namespace or address is not there yet (the leaf's PXE VLAN
        comes up later than metalcore, a lab namespace is being built), retry with backoff instead of
        exiting: supervisord restarting us in a loop helps nobody."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.service = PxeService(self.settings, self.publisher, self.metal_api).start()
                return
            except Exception as e:
                logger.error("pxe: cannot open the PXE sockets ({}: {}); retrying in {:.0f} s",
                             type(e).__name__, e, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _listen(self) -> None:
        """switch.bootconfig (fallback boot config) and hammer events; a dead bus only costs the fallback."""
        sub = EventSubscriber(self.settings.run_dir, streams=("switch", "hammer"))
        while not self._stop.is_set():
            try:
                env = sub.recv(timeout=0.5)
                if env is not None and self.service is not None:
                    self.service.on_bus_event(env)
            except Exception:
                logger.opt(exception=True).warning("pxe: handling a bus event failed")

    def stop(self) -> None:
        self._stop.set()
        if self.service is not None:
            self.service.stop()
        self.metal_api.close()

    def stats(self) -> dict:
        return self.service.stats() if self.service is not None else {"jobs_in_flight": 0, "open": False}


main = run(PxeStage)

if __name__ == "__main__":
    main()
