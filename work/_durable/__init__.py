"""The durable path: the Queue (producer side), the consumer behind ``Worker.serve``."""
