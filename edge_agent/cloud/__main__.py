"""`python -m edge_agent.cloud`: the same as `edge-agent-cloud`."""

import sys

from edge_agent.cloud.cli import main

sys.exit(main())
