from pathlib import Path


def damage(home: str) -> None:
    (Path(home) / "workers" / "node7-123-abcd.hb").write_bytes(b"\x00garbage heartbeat")
