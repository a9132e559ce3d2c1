"""What every service shares: settings, the NATS connection, publishing, model calls."""
