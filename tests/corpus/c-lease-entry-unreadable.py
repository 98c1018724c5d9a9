import os

from spool import Home


def damage(home: str) -> None:
    lease = Home.open(home).lease("someone")
    lease.acquire(timeout=1)
    entries = sorted(os.listdir(lease.path))
    with open(f"{lease.path}/{entries[-1]}", "wb") as f:
        f.write(b"\x00\xffnot json")
