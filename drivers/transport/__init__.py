"""Wire transports shared by drivers."""
