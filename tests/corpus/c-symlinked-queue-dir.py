import os
import shutil
from pathlib import Path

from spool import Home


def damage(home: str) -> None:
    q = Home.open(home).queue("default")
    shard = Path(q.root) / "ready" / "00"
    shutil.rmtree(shard)
    outside = Path(home).parent / "elsewhere"
    outside.mkdir()
    os.symlink(outside, shard)
