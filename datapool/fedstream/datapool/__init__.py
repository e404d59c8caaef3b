"""The data pool service: one data set, partitioned over N clients, served in batches.

Imports numpy and grpc only, never TensorFlow: it must start fast and stay small.
"""
