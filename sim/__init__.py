"""Simulators that speak the real device protocols on loopback."""
