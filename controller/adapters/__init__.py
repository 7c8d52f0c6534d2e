"""The edges: signal transports and the operator-facing surfaces."""
