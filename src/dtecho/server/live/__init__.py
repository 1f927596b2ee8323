"""Live configuration: validate a new configuration, swap it in, keep it or roll it back.

The running configuration is one immutable :class:`~dtecho.server.live.snapshot.ConfigSnapshot`
(settings, model registry, route cache view). A reload builds a complete new snapshot
beside it and swaps it in with plain assignments between two awaits, so a request that
already holds the old one finishes with it; :class:`~dtecho.server.live.reloader.LiveConfig`
does that, :mod:`~dtecho.server.live.watch` triggers it when the config file changes.
"""
