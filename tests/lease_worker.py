"""A process that takes unit locks the way a flow's task does (croco.leases.LeaseLockManager), for test_leases.

python lease_worker.py hold ROOT KEY                     hold the lock (renewed) until killed; prints "held"
python lease_worker.py count ROOT KEY FILE TIMES         add 1 to the number in FILE, TIMES times, each under the lock
python lease_worker.py race ROOT START KEY...            at time START, one try at each KEY in turn, 2 s apart;
                                                         prints "won KEY" or "lost KEY"
"""

import sys
import time
import uuid

from croco.leases import LeaseLockManager
from croco.storage import Storage


def main(command: str, root: str, *arguments: str) -> None:
    locks = LeaseLockManager(Storage(root))
    if command == "hold":
        assert locks.acquire_lock(arguments[0], holder=uuid.uuid4().hex)
        print("held", flush=True)
        time.sleep(600)
    elif command == "count":
        key, counter, times = arguments[0], arguments[1], int(arguments[2])
        for _ in range(times):
            holder = uuid.uuid4().hex
            assert locks.acquire_lock(key, holder=holder)
            seen = int(open(counter).read())
            time.sleep(0.01)  # a lost update needs the other writer in between
            open(counter, "w").write(str(seen + 1))
            locks.release_lock(key, holder)
    elif command == "race":
        start, keys = float(arguments[0]), arguments[1:]
        for turn, key in enumerate(keys):
            time.sleep(max(0.0, start + 2 * turn - time.time()))
            won = locks.acquire_lock(key, holder=uuid.uuid4().hex, acquire_timeout=0)
            print("won" if won else "lost", key, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
