"""Built-in strategies, one module each. Import ``cl.strategy.register`` and
``cl.strategy.Strategy`` to write your own (see README, "Your own strategy")."""
