"""The application layer: command line today, the REST service on top of editor_core next."""
