"""The scheduler process: enqueues each due slot of the periodic jobs once."""
