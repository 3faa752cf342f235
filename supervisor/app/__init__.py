"""The application: the service façade, the tick's steps, the daemon and the CLI."""
