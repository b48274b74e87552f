"""`python -m edge_agent` is the `edge-agent` command."""

from edge_agent.entry import main

main()
