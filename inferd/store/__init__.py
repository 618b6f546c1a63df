"""Persistence behind small interfaces: governance records, the usage ledger and the audit log (SQLite)."""
