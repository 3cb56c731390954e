"""Running a resource upstream: the OpenRouter client, error taxonomy, retries, outputs, limits and jobs."""
