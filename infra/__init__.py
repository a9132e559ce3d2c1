"""Deployment-side code: embedded servers, NATS topology, database migrations, process specs."""
