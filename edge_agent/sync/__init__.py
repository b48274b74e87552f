"""Upstream sync: the MQTT session that drains the SQLite outbox."""
