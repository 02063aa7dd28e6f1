"""Azure ML API v2 (azure-ai-ml): Kubernetes attachments, assets, online endpoints and deployments."""

from controller.backends.azureml.v2.backend import V2_HANDLERS, AzureMLV2Backend

__all__ = ["V2_HANDLERS", "AzureMLV2Backend"]
