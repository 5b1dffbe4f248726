"""Helpers shared by the integration tests (reading back what a flow run left on the server)."""
