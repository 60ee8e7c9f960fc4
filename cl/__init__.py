"""A continual-learning experiment platform: scenario streams -> strategy plugins -> metrics -> loggers."""
__version__ = "0.1.0"
