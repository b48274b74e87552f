"""`edge-agent ui`: the technician's local page, a separate process the daemon never imports."""
