"""Step scorers (PRMs) and routers; in-process implementations live in `hf`."""
