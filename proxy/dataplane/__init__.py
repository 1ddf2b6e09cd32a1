"""The data plane: client connections, exchanges, upstream pools, health, access log."""
