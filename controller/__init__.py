"""curtaild: keeps a mining farm's grid draw inside what the grid allows."""
