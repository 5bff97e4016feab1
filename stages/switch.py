"""The switch stage: placeholder until its own issue lands; it runs, heartbeats and answers status."""

from metalcore.stage import Stage, run


class SwitchStage(Stage):
    name = "switch"

    def start(self) -> None:
        pass


main = run(SwitchStage)

if __name__ == "__main__":
    main()
