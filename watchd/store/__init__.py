"""The SQLite state: every SQL statement watchd makes against its state database lives in this package.

- `schema`: the tables, and the columns added since (the one place a schema change is made);
- `db`: opening the file (read-only beside a running daemon) and `Transaction`;
- `writer`: `Store`, the daemon's connection and the one thread that writes through it;
- one module per family of tables, as functions of a connection: `engine_state` (per-key state,
  watch versions, subjects heard, the commit of a batch), `decisions`, `outbox` (handoffs and their
  transitions, dead letters), `runs` (agent runs and steps), `agent_watches`, `batches`,
  `schedules` (schedules and ticks), `meta`, and `snapshot` (copies for backups).

Callers get typed rows (dataclasses, msgspec Structs) and never build SQL.
"""

from watchd.store.db import Transaction, connect, connect_existing, db_path, open_readonly
from watchd.store.writer import Store

__all__ = ["Store", "Transaction", "connect", "connect_existing", "db_path", "open_readonly"]
