"""The environment a supervisor or a replica starts with: an allow-list, never the controller's whole environment.

On Azure ML a replica runs in a container whose environment holds the Environment's variables,
Azure ML's own ``AZUREML_*`` and the image's basics, never the credentials that deployed it. The
controller's environment holds exactly those credentials (``AZURE_CLIENT_SECRET``,
``AMLOPS_API_TOKEN``, git tokens, whatever a ``fromEnv`` reference names), and replicas run users'
``score.py``: so a child process gets only what the host must pass on for Python, the locale, the
clock, CUDA and TensorFlow to work, plus what the backend sets for it. Host ``AZUREML_*`` values
are not passed on either: on an Azure ML compute they include run tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

HOST_NAMES: Final = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS",
    "PYTHONFAULTHANDLER", "PYTHONIOENCODING", "PYTHONUTF8", "VIRTUAL_ENV",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
})
"""Host variables a child process may inherit by exact name."""
HOST_PREFIXES: Final = ("LC_", "CUDA_", "NVIDIA_", "TF_", "XLA_")
"""Host variable families a child process may inherit (locale, GPU runtime, TensorFlow tuning)."""
SECRET_MARKERS: Final = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "APIKEY", "API_KEY", "PRIVATE")
"""Substrings that keep a variable out even when its name or family is allowed."""


def looks_secret(name: str) -> bool:
    """Whether a variable's name says it holds a credential."""
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def host_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` a child process may inherit (see the module docstring)."""
    return {name: value for name, value in environ.items()
            if (name in HOST_NAMES or name.startswith(HOST_PREFIXES)) and not looks_secret(name)}


def child_environment(environ: Mapping[str, str], own: Mapping[str, str]) -> dict[str, str]:
    """A child's environment: the allowed host variables, then ``own`` (what the backend sets) over them."""
    return {**host_variables(environ), **own}
