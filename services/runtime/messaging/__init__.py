"""Messaging: the connection, publishing, acks and dead letters, keep-alives, the pull consumer loop,
the one place that runs a handler on a message (`handling`), and a service's registration (`service`)."""
