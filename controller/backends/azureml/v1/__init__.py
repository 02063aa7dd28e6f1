"""Azure ML API v1 (azureml-core): AKS computes, environments, models and AKS web services."""

from controller.backends.azureml.v1.backend import V1_HANDLERS, AzureMLBackend

__all__ = ["V1_HANDLERS", "AzureMLBackend"]
