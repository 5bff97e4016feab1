"""The nsq_consumer stage: placeholder until its own issue lands; it runs, heartbeats and answers status."""

from metalcore.stage import Stage, run


class NsqConsumerStage(Stage):
    name = "nsq_consumer"

    def start(self) -> None:
        pass


main = run(NsqConsumerStage)

if __name__ == "__main__":
    main()
