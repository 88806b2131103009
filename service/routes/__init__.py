"""The API's routers: edits, model queries (generate, score), and the service itself."""
