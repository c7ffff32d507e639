"""Local HTTP servers that stand in for third-party APIs in development and tests."""
