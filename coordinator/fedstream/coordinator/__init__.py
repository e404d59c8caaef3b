"""The coordinator service: center model, rounds, aggregation, server optimizer, evaluation."""
