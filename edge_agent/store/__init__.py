"""The local SQLite store: one owner thread, batched transactions, the outbox."""
