"""The data path between a link and a model: clocks, ring buffers and windows."""
