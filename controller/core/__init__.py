"""The pure core: decisions from frozen data and `now`. No I/O, no clock."""
