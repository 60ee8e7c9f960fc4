"""Scenario builders. Every module here registers its scenarios with
``@cl.registry.scenarios.register(name, Config)``; builders take ``(cfg, seed)``
and return a :class:`cl.core.streams.Scenario`."""
