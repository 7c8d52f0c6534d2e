"""Device drivers: miners, PDUs and meters, their transports and their simulators."""
