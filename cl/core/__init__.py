"""The core contracts: the strategy protocol, registries, typed configs, streams of experiences and metrics."""
