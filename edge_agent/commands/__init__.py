"""CLI sub-commands, one module per area, registered in `edge_agent.cli`."""
