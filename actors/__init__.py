"""Dramatiq actors, the broker set-up and the job ledger.

Importing this package declares nothing on a broker: ``setup_broker`` creates
the broker from the settings and declares every registered job type on it, so
web, worker and scheduler processes can import job modules in any order.
"""
