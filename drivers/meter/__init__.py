"""Site meters and temperature sensors."""
