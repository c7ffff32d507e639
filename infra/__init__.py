"""Settings, database sessions and external-service clients shared by all processes."""
