"""Serve an app with N uvicorn processes, each on its own SO_REUSEPORT socket (a bench experiment).

`python -m bench.reuseport_serve N PORT [APP]`: the kernel then spreads new
connections over the N sockets by their addresses, instead of letting the
process that wakes first accept a burst of them (uvicorn's `--workers N`
shares one socket). Used by `python -m bench.latency --reuse-port`; not how the
service is deployed (see README, Deploying).
"""

from __future__ import annotations

import multiprocessing
import socket
import sys

import uvicorn


def _serve(app: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    config = uvicorn.Config(app, factory=True, loop="uvloop", http="httptools", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def main() -> int:
    n, port = int(sys.argv[1]), int(sys.argv[2])
    app = sys.argv[3] if len(sys.argv) > 3 else "api.app:create_app"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_serve, args=(app, port)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return max(p.exitcode or 0 for p in procs)


if __name__ == "__main__":
    sys.exit(main())
