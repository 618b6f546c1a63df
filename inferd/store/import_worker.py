"""The ledger importer process: `python -m inferd.store.import_worker <database> <journal dir> <interval s>`.

Started by the server (`importer.LedgerImporter`). Every interval it imports the journal's complete lines up
to the position the writer publishes (`journal.PublishedPosition`), never past it: a line the writer cut
off after a failed write is never taken. It exits when its stdin closes: the server closes it to stop it,
and the kernel closes it when the server dies, so no importer outlives its server.
"""

from __future__ import annotations

import logging
import os
import select
import sys
from pathlib import Path

from inferd.store.importer import import_journal
from inferd.store.journal import PublishedPosition
from inferd.store.sqlite import connect

log = logging.getLogger("inferd.store")


def run(database: Path, directory: Path, interval_s: float) -> None:
    conn = connect(database)
    position = PublishedPosition(directory, writable=False)
    try:
        while True:
            readable, _, _ = select.select([sys.stdin.fileno()], [], [], interval_s)
            if readable and not os.read(sys.stdin.fileno(), 1):
                return  # stdin closed: the server stopped or died
            try:
                import_journal(conn, directory, position.read())
            except Exception:
                log.exception("importing the ledger journal into SQLite failed (retrying)")
    finally:
        position.close()
        conn.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    database, directory, interval = argv
    run(Path(database), Path(directory), float(interval))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
