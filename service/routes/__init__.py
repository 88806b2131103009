"""The API's routers: edits, the edit log's events, model queries (generate, score),
OpenAI-compatible completions, and the service itself. Each route parses, calls one
handler method (``service.handlers``) and returns its answer."""
