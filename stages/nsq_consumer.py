"""The nsq_consumer stage: machine events from NSQ (topic <partition>-machine, channel "core") become
ipmi jobs; a message is finished only when the BMC read back what the event asked (metalcore/nsq/).

Bus events (stream "nsq"): done, requeued, given-up, poison, expired, ignored, unsupported, free.
"""

from metalcore.bus import JobClient
from metalcore.clients.metal_api import MetalAPIClient
from metalcore.nsq.consumer import MachineEventConsumer
from metalcore.stage import Stage, run


class NsqConsumerStage(Stage):
    name = "nsq_consumer"

    def start(self) -> None:
        s = self.settings
        self.metal_api = MetalAPIClient(s.metal_api_url, s.hmac_key, timeout=s.metal_api_timeout)
        self.jobs = JobClient(s.run_dir, "ipmi", "nsq_consumer", publisher=self.publisher)
        self.consumer = MachineEventConsumer(s, self.publisher, self.jobs, self.metal_api).start()

    def stop(self) -> None:
        self.consumer.stop(drain_timeout=20.0)
        self.jobs.close()
        self.metal_api.close()

    def stats(self) -> dict:
        return {"jobs_in_flight": self.jobs.in_flight(), "ipmi_alive": self.jobs.worker_alive,
                **self.consumer.stats()}


main = run(NsqConsumerStage)

if __name__ == "__main__":
    main()
