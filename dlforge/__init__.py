"""dlforge: implement, train, evaluate and sample from every family of deep-learning model."""
__version__ = "0.1.0"
