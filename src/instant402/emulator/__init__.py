"""An OpenRouter-compatible HTTP server for the sandbox and the tests, with scriptable faults."""
