"""Operations: Prometheus metrics, request ids and access logs, readiness, and 503s for outages."""
