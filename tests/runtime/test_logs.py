"""Known secrets never reach a log line, including ones a backend resolves after start-up."""

from __future__ import annotations

import io
import logging

from controller.runtime.logs import RedactingFilter, TextFormatter


def _logger(redactor: RedactingFilter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    handler.addFilter(redactor)
    logger = logging.getLogger(f"test-redaction-{id(redactor)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def test_backend_secrets_survive_a_settings_reload() -> None:
    redactor = RedactingFilter()
    logger, out = _logger(redactor)
    redactor.set_secrets(["webhook-secret-1"])
    redactor.add_secrets(("client-secret-xyz",))
    redactor.set_secrets(["webhook-secret-2"])  # SIGHUP: settings' secrets replaced
    logger.info("login failed for client-secret-xyz with webhook-secret-2 and webhook-secret-1",
                extra={"fields": {"token": "client-secret-xyz"}})
    text = out.getvalue()
    assert "client-secret-xyz" not in text and "webhook-secret-2" not in text
    assert "webhook-secret-1" in text  # no longer a secret after the reload
