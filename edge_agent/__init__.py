"""edge-agent: edge inference daemon for Linux gateways."""

__version__ = "0.1.0"
