"""The ipmi stage: placeholder until its own issue lands; it runs, heartbeats and answers status."""

from metalcore.stage import Stage, run


class IpmiStage(Stage):
    name = "ipmi"

    def start(self) -> None:
        pass


main = run(IpmiStage)

if __name__ == "__main__":
    main()
