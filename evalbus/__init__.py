"""The `evalbus` command line: run batches, watch them, start and stop the embedded stack."""
