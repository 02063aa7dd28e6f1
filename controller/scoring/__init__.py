"""The scoring host: a separate process that serves an Azure ML entry script over HTTP.

Run it as ``python -m controller.scoring --help``. It is the only part of amlops that may import
TensorFlow, and does so only when the entry script does (or for the built-in SavedModel scorer,
or under ``--tensorflow-compat v1``, see :mod:`controller.scoring.importing`). The controller
itself never imports this package; it starts the host as a process.

Modules: ``options`` (the command line contract), ``sockets`` (listening socket, fd sharing),
``connections`` (HTTP/1.1 on one client connection: parsing, limits, writing), ``serving`` (routes,
auth, the watchdog, lifecycle), ``dispatching`` (run() threads and batching),
``importing`` (entry scripts, TF1 compatibility), ``savedmodels`` (the no-code scorer),
``forking`` (``--workers``), ``keys``, ``metrics`` and ``reporting`` (logs and status file).
"""
