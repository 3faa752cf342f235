"""Stage kinds: what prepare, train, merge, transfer and script do around one attempt."""
