"""sapo-swarm node: one participant of the swarm (config, model, tasks, generator, trainer, runtime)."""

__version__ = "0.1.0"
