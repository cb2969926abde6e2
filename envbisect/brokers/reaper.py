"""``python -m envbisect.brokers.reaper PROGRAM [ARG...]``: run a service as a child subreaper.

PROGRAM runs in this process's group, and every process re-parented here while it
runs is reaped. A private RabbitMQ needs it: at every boot, short-lived Erlang
nodes (``epmd-starter``) leave ``erl_child_setup`` and ``inet_gethost`` orphans
behind, whose groups are gone before anyone could look for them. Without this
parent they would be re-parented to envbisect (a subreaper too, which reaps only
what it knows) and, once envbisect exits, to a PID 1 that may never reap them.

Ends with PROGRAM's exit status (128 + N when signal N ended it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from envbisect.processes import become_subreaper


def main(argv: Sequence[str]) -> int:
    """Run ``argv`` and reap every child until it ends; its exit status."""
    if not argv:
        print("usage: python -m envbisect.brokers.reaper PROGRAM [ARG...]", file=sys.stderr)
        return 2
    become_subreaper()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], list(argv))
        except OSError as exc:
            print(
                f"envbisect.brokers.reaper: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr
            )
        os._exit(127)
    while True:
        reaped, status = os.wait()
        if reaped == pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
