"""dpokit: align language models to preference data with DPO and its family."""

__version__ = "0.1.0"
