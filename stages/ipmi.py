"""The ipmi stage: serves the BMC jobs "power", "boot-device" and "identify" on jobs-ipmi.sock.

Job bodies (results in brackets; a job succeeds only after the BMC reads the asked state back):
    power        {machine_id, state: on|off|reset|cycle, ipmi?}   [power, observed_off, action, bmc, attempts]
    boot-device  {machine_id, device: pxe|disk|bios, persistent, efi, ipmi?}
                                                                 [bootdev, persistent, efi, persistent_verified]
    identify     {machine_id, on: bool, ipmi?}                    [identify, verified, power]
``ipmi`` is metal-api's {address: host[:port], user, password}; without it the worker asks
GET /v1/machine/{id}/ipmi. The work itself is in metalcore/ipmi/.
"""

from metalcore.bus import JobWorker
from metalcore.clients.metal_api import MetalAPIClient
from metalcore.ipmi.worker import IpmiWorker
from metalcore.stage import Stage, run


class IpmiStage(Stage):
    name = "ipmi"

    def start(self) -> None:
        s = self.settings
        self.metal_api = MetalAPIClient(s.metal_api_url, s.hmac_key, timeout=s.metal_api_timeout)
        self.worker = IpmiWorker(s, self.metal_api)
        # Threads, not IPMI requests: a job waiting for a power cycle's read-back or for its BMC's turn holds a
        # thread but no slot of the ipmi_concurrency budget, so 500 BMCs can cycle at once.
        threads = max(64, min(1024, s.ipmi_concurrency * 8))
        self.jobs = JobWorker(s.run_dir, "ipmi", self.worker.handle, concurrency=threads,
                              publisher=self.publisher).start()

    def stop(self) -> None:
        self.jobs.stop(drain_timeout=20.0)
        self.worker.stop()
        self.metal_api.close()

    def stats(self) -> dict:
        return {"jobs_in_flight": self.jobs.in_flight(), "jobs_done": self.jobs.done_count,
                "jobs_failed": self.jobs.failed_count, **self.worker.stats()}


main = run(IpmiStage)

if __name__ == "__main__":
    main()
