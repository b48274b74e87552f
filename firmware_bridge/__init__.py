"""Everything that talks to sensor firmware: wire protocols, links, device profiles, an emulator."""
