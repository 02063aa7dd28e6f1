"""The OpenAPI document a scoring service serves on ``/swagger.json``, in Azure ML's shape."""

from __future__ import annotations

from typing import Any


def swagger_document(service_name: str | None, score_paths: list[str], auth: str) -> dict[str, Any]:
    """A small OpenAPI 2 document in the shape Azure ML serves on /swagger.json."""
    title = service_name or "amlops-scoring"
    score_operation = {
        "description": "Run the web service's model and get the prediction output",
        "operationId": "RunMLService",
        "parameters": [{"name": "serviceInputPayload", "in": "body", "description": "The input payload",
                        "schema": {"type": "object", "example": {"data": [[0.0]]}}}],
        "responses": {
            "200": {"description": "Success", "schema": {"type": "object"}},
            "default": {"description": "Failure", "schema": {"$ref": "#/definitions/ErrorResponse"}},
        },
    }
    if auth != "none":
        score_operation["security"] = [{"Bearer": []}]
    paths: dict[str, Any] = {
        "/": {"get": {"description": "Simple health check endpoint to ensure the service is up",
                      "operationId": "ServiceHealthCheck",
                      "responses": {"200": {"description": "Health check message"}}}},
    }
    for path in score_paths:
        paths[path] = {"post": score_operation}
    document: dict[str, Any] = {
        "swagger": "2.0",
        "info": {"title": title, "description": f"API specification for the scoring service {title}",
                 "version": "1.0"},
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": paths,
        "definitions": {"ErrorResponse": {"type": "object", "properties": {"message": {"type": "string"}}}},
    }
    if auth != "none":
        document["securityDefinitions"] = {"Bearer": {
            "type": "apiKey", "name": "Authorization", "in": "header",
            "description": "For example: Bearer abc123"}}
    return document
