"""The runtime: the Worker, executions, timers, concurrent jobs and the synchronous twins."""
