import subprocess
import sys


def damage(home: str) -> None:
    """A coordinator on this host that died holding the lease (it never released it)."""
    code = (
        "import os, sys; from spool import Home; "
        "Home.open(sys.argv[1]).lease('coordinator-dead').acquire(timeout=1); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, home], check=True)
