"""The core: status codes, jobs, Ctx, exceptions, adapter composition, retry policies (no I/O)."""
