"""The pxe stage: placeholder until its own issue lands; it runs, heartbeats and answers status."""

from metalcore.stage import Stage, run


class PxeStage(Stage):
    name = "pxe"

    def start(self) -> None:
        pass


main = run(PxeStage)

if __name__ == "__main__":
    main()
