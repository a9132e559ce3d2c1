"""evalbus services: one FastStream app per folder, plus a small shared runtime."""
