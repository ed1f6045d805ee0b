"""A TCP port on 127.0.0.1 for a child process to listen on (a server, torchrun's store): chosen here, bound there.

Between the choice and the child's bind the port is free, and anything may
take it. The kernel hands out ports itself (a bind to port 0, the local end of
every outgoing connection) from ip_local_port_range only, so a port below that
range is taken only by a process that names it: the choice is made there, and
the HTTP clients and servers of another pytest-xdist worker cannot take it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10000  # above the registered services a test machine may run
RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    ephemeral_low = int(RANGE_FILE.read_text().split()[0]) if RANGE_FILE.is_file() else 32768
    pick = random.Random()  # seeded from os.urandom, not by the tests' seeds: two workers pick apart
    for _ in range(100):
        port = pick.randrange(LOWEST, ephemeral_low) if ephemeral_low > LOWEST + 1000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port below {ephemeral_low} in 100 tries")
