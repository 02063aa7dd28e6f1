"""The azureml backend: Azure ML through its SDKs, one set of per-kind handlers per API generation.

``v1`` drives azureml-core (AKS web services, out of support since June 2026); ``v2`` drives
azure-ai-ml (Kubernetes online endpoints). Both are optional extras, imported lazily: importing
this package imports neither SDK. Credentials, error classification, ownership tags and the
workspace itself are shared (``credentials``, ``classifying``, ``tags``, ``workspaces``).
"""

from controller.backends.azureml.v1 import AzureMLBackend

__all__ = ["AzureMLBackend"]
