"""Miner drivers, one module per firmware family."""
