"""The switch stage: registers each leaf switch at the Metal API and reconciles its ports over NETCONF.

All logic lives in metalcore/switch/ (models: pure desired state/diff/XML; netconf_leaf: the driver;
reconcile: the loop); this file only wires settings, the Metal API client and the bus together.
"""

from metalcore.clients.metal_api import MetalAPIClient
from metalcore.stage import Stage, run
from metalcore.switch.reconcile import SwitchService


class SwitchStage(Stage):
    name = "switch"

    def start(self) -> None:
        s = self.settings
        self.api = MetalAPIClient(s.metal_api_url, s.hmac_key, timeout=s.metal_api_timeout)
        self.service = SwitchService(s, self.api, self.publisher)
        self.service.start()

    def stop(self) -> None:
        self.service.stop()
        self.api.close()

    def stats(self) -> dict:
        return self.service.stats()


main = run(SwitchStage)

if __name__ == "__main__":
    main()
