from spool import Home


def damage(home: str) -> None:
    q = Home.open(home).queue("default")
    q.put({"v": 1})
    q.claim("ghost-worker", 1)
