"""An Azure ML (SDK v1) REST emulator: an HTTPS proxy that plays AAD, ARM, the workspace services and blob storage.

Used by the azureml backend's tests to run the real, unpatched ``azureml-core`` against this machine.
Nothing is ever forwarded off the machine.
"""
