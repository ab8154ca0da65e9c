"""What tunelab knows of the machine it runs on: devices, usable cores and their load, processes, disk space and
start-up. Below every pipeline stage; imports no stage."""
