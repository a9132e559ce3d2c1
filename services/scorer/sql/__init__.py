"""The SQL equivalence check: reading the SQL text (`text`), running both queries read-only on a
real database (`execution`, the entry point) and comparing their result sets (`comparison`)."""
