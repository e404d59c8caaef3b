"""The worker: binds one device, pulls the task and weights, computes client updates, pushes."""
