"""Device drivers: miners, PDUs, meters and sensors, their transports and register maps."""
