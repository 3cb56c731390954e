"""The sale of one call, shared by every door that sells: the HTTP paid route, Server-Sent Events, MCP tool calls
and the job runner for long runs. ``core`` owns the money rules; the doors only translate their wire formats."""
