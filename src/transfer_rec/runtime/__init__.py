"""How stages use the machine: worker processes, torch threads, progress lines, time bounds."""
