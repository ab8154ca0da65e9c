"""What tunelab knows of the machine it runs on: its devices, the cores this process may use and
their load, child processes, disk space and the interpreter's start-up. Below every pipeline stage;
imports no stage."""
