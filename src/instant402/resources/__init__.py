"""Instant resources: a model, a prompt template with typed parameters, and a price."""
