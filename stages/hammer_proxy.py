"""The hammer_proxy stage: placeholder until its own issue lands; it runs, heartbeats and answers status."""

from metalcore.stage import Stage, run


class HammerProxyStage(Stage):
    name = "hammer_proxy"

    def start(self) -> None:
        pass


main = run(HammerProxyStage)

if __name__ == "__main__":
    main()
