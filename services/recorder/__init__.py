"""The recorder: the only service that touches PostgreSQL."""
