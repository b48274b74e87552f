"""Running as a service: sd_notify, the pipeline watchdog, the control socket, install, doctor.

The daemon talks to systemd and to the technician through this package only:
`hub.ServiceHub` is the one object the daemon holds; everything else is imported
by the CLI on demand.
"""
