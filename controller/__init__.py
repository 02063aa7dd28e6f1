"""amlops: a declarative GitOps controller for Azure Machine Learning GPU inference."""

__version__ = "0.1.0"
