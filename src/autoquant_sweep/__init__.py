"""autoquant-sweep: ModelOpt AutoQuant sensitivity sweeps over dtype x granularity."""

__version__ = "0.1.0"
