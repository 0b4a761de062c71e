"""uiaa: image aesthetic assessment with the unified probabilistic formulation."""

__version__ = "0.1.0"
