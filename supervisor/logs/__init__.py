"""Job logs: follow them (tail + inotify), scan them against the signature catalogue, diagnose a file."""
