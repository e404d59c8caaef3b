"""The `fedstream` command: each service on its own, a local federation, the simulation."""
