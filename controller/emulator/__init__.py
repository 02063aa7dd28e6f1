"""An Azure ML REST emulator (SDK v1 and v2): an HTTPS proxy that plays AAD, ARM, the workspace services and blob storage.

Used by the azureml backend's tests to run the real, unpatched ``azureml-core`` and ``azure-ai-ml``
(with ``azure-identity``) against this machine; deployed services and online deployments run as
real scoring replicas on the local backend. Nothing is ever forwarded off the machine. The route
families are listed in ``emulating``.
"""
