"""The REST service on top of ``editor_core``: settings, the live stack, handlers, routes,
the edit store on Redis and the web console."""
