"""The OpenAPI 3.0 description of the service, built from the served model's input shape."""

from __future__ import annotations

from typing import Any

from trainchain import __version__
from trainchain.core.sizes import human_size

_REF = "#/components/schemas/"
ERROR_STATUSES = {
    400: "The body is wrong: shape, type, values, or an unreadable image",
    409: "The served model's family does not answer this endpoint (EEG: /classify, CNN: /predict)",
    413: "The body is over --max-body, or too many epochs, or too many pixels",
    415: "The content type is not one this endpoint reads",
    422: "A well-formed input the model could not process",
    503: "No model is loaded yet",
}


FEEDBACK_STATUSES = {
    400: "The body is wrong: not an object, a malformed request id, or labels that are not "
    "one per prediction among the model's classes",
    404: "The request was not captured (not sampled, deleted by the size cap, or capture is off)",
    409: "Feedback was given for this request already",
    413: "The body is over --max-body",
    415: "The content type is not application/json",
    503: "The feedback could not be stored",
}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF + schema}}}


def _responses(ok: str, ok_schema: str, statuses: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok, "content": _json(ok_schema)}}
    for status in statuses:
        out[str(status)] = {"description": ERROR_STATUSES[status], "content": _json("Error")}
    return out


def _schemas(shape: tuple[int, int], max_epochs: int) -> dict[str, Any]:
    channels, samples = shape
    channel = {
        "type": "array",
        "minItems": samples,
        "maxItems": samples,
        "items": {"type": "number"},
        "description": f"{samples} samples of one channel",
    }
    epoch = {
        "type": "array",
        "minItems": channels,
        "maxItems": channels,
        "items": channel,
        "description": f"one epoch: {channels} channels x {samples} samples",
    }
    version = {"type": "string", "description": "the registry version that answered"}
    alias = {"type": "string", "enum": ["champion", "challenger"]}
    nullable_string = {"type": "string", "nullable": True}
    request_id = {
        "type": "string",
        "pattern": "^[0-9a-f]{24}$",
        "description": "with --capture: this answer's id, for POST /feedback (also the "
        "X-Request-Id header of every prediction)",
    }
    captured = {
        "type": "boolean",
        "description": "with --capture: whether this request was sampled and is being stored",
    }
    return {
        "Epoch": epoch,
        "Epochs": {
            "oneOf": [
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_epochs,
                    "items": {"$ref": _REF + "Epoch"},
                },
                {"$ref": _REF + "Epoch"},
            ],
            "description": f"N epochs (1 <= N <= {max_epochs}) of {channels} x {samples} finite "
            "numbers, or one epoch",
        },
        "ClassifyResult": {
            "type": "object",
            "required": ["labels", "model", "version", "alias"],
            "properties": {
                "labels": {"type": "array", "items": {"type": "string"}},
                "model": {"type": "string"},
                "version": version,
                "alias": alias,
                "request_id": request_id,
                "captured": captured,
            },
        },
        "PredictResult": {
            "type": "object",
            "required": ["label", "probabilities", "model", "version", "alias"],
            "properties": {
                "label": {"type": "string"},
                "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                "model": {"type": "string"},
                "version": version,
                "alias": alias,
                "request_id": request_id,
                "captured": captured,
            },
        },
        "Feedback": {
            "type": "object",
            "required": ["request_id", "labels"],
            "properties": {
                "request_id": request_id,
                "labels": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_epochs,
                    "items": {"type": "string", "minLength": 1},
                    "description": "the true labels, one per epoch or image of that request, "
                    "among the model's classes",
                },
            },
            "additionalProperties": False,
        },
        "FeedbackResult": {
            "type": "object",
            "required": ["request_id", "labels", "predicted", "stored"],
            "properties": {
                "request_id": request_id,
                "labels": {"type": "array", "items": {"type": "string"}},
                "predicted": {"type": "array", "items": {"type": "string"}},
                "stored": {"type": "boolean"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error", "status"],
            "properties": {
                "error": {"type": "string", "description": "what was wrong and what was expected"},
                "status": {"type": "integer"},
            },
            "additionalProperties": True,
        },
        "Health": {
            "type": "object",
            "required": ["status", "model"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "model": {"type": "string"},
                "version": nullable_string,
                "alias": {"type": "string"},
                "loaded_at": nullable_string,
                "error": nullable_string,
                "challenger": nullable_string,
            },
            "additionalProperties": True,
        },
        "Drift": {
            "type": "object",
            "description": "The latest test of the champion's recent inputs against its "
            "training data's drift reference; state 'off' (no reference, --no-drift) and "
            "'collecting' (fewer than min_window inputs yet) carry a message and no groups",
            "required": ["state", "drifted", "message"],
            "properties": {
                "state": {"type": "string", "enum": ["off", "collecting", "tested", "error"]},
                "drifted": {"type": "boolean"},
                "message": {"type": "string"},
                "model": {"type": "string"},
                "version": {"type": "string"},
                "window": {"type": "integer", "minimum": 0},
                "max_window": {"type": "integer"},
                "min_window": {"type": "integer"},
                "alpha": {"type": "number"},
                "correction": {"type": "string", "enum": ["holm", "bh"]},
                "tested_at": {"type": "string"},
                "worker": {"type": "integer"},
                "groups": {
                    "type": "object",
                    "additionalProperties": {"$ref": _REF + "DriftGroup"},
                },
            },
            "additionalProperties": True,
        },
        "DriftGroup": {
            "type": "object",
            "required": ["score", "p_value", "window", "detected", "moved"],
            "properties": {
                "score": {"type": "number", "nullable": True},
                "p_value": {"type": "number", "nullable": True},
                "window": {"type": "integer"},
                "detected": {"type": "boolean"},
                "note": {"type": "string"},
                "moved": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["feature", "direction", "shift"],
                        "properties": {
                            "feature": {"type": "string"},
                            "direction": {"type": "string", "enum": ["up", "down"]},
                            "shift": {"type": "number"},
                            "statistic": {"type": "number"},
                            "p_value": {"type": "number"},
                            "reference": {"type": "number"},
                            "window": {"type": "number"},
                        },
                    },
                },
            },
            "additionalProperties": True,
        },
        "ModelInfo": {
            "type": "object",
            "required": ["model", "version", "alias", "family", "metrics", "loaded_at"],
            "properties": {
                "model": {"type": "string"},
                "version": {"type": "string"},
                "alias": alias,
                "family": {"type": "string"},
                "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                "commit": nullable_string,
                "chain": nullable_string,
                "loaded_at": {"type": "string"},
                "challenger": {
                    "type": "object",
                    "nullable": True,
                    "description": "The registry's challenger alias (null: none), served or "
                    "not; a served one also carries this schema's fields",
                    "required": ["version", "alias", "served", "mode", "canary_share"],
                    "properties": {
                        "version": {"type": "string"},
                        "alias": alias,
                        "served": {"type": "boolean"},
                        "mode": {"type": "string", "enum": ["canary", "shadow"], "nullable": True},
                        "canary_share": {"type": "number", "minimum": 0, "maximum": 1},
                        "why": {"type": "string", "description": "why it is not served"},
                    },
                    "additionalProperties": True,
                },
            },
            "additionalProperties": True,
        },
    }


def build(
    *,
    model: str,
    shape: tuple[int, int],
    max_epochs: int,
    max_body: int,
    max_pixels: int,
) -> dict[str, Any]:
    """The document ``/openapi.json`` returns."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    errors = (400, 409, 413, 415, 422, 503)
    limits = f"Bodies are at most {human_size(max_body)}."
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"trainchain serving {model}",
            "version": __version__,
            "description": "The registry's champion of "
            f"{model} (hot reloaded when the alias moves). {limits} Every error is JSON "
            "(the Error schema).",
        },
        "paths": {
            "/classify": {
                "post": {
                    "summary": "EEG epochs to labels",
                    "description": f"N <= {max_epochs} epochs of {shape[0]} channels x "
                    f"{shape[1]} samples as JSON, or the same array as NumPy .npy "
                    "(np.save; no pickles). EEG-family models only.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": _REF + "Epochs"}},
                            "application/x-npy": binary,
                        },
                    },
                    "responses": _responses("One label per epoch", "ClassifyResult", errors),
                }
            },
            "/predict": {
                "post": {
                    "summary": "An image to a label and class probabilities",
                    "description": "A multipart upload (field 'image', or the first file) or "
                    "the raw image; converted and resized as the model's MLmodel records. "
                    f"At most {max_pixels} pixels. CNN-family models only.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"image": {"type": "string", "format": "binary"}},
                                    "required": ["image"],
                                }
                            },
                            "image/png": binary,
                            "image/jpeg": binary,
                            "application/octet-stream": binary,
                        },
                    },
                    "responses": _responses("The most probable class", "PredictResult", errors),
                }
            },
            "/feedback": {
                "post": {
                    "summary": "The true labels of a captured request (trainchain serve --capture)",
                    "description": "Stored beside the capture, once: a second answer for the "
                    "same request is a 409. `trainchain data capture DIR` exports the labelled "
                    "captures as training data.",
                    "requestBody": {"required": True, "content": _json("Feedback")},
                    "responses": {
                        "200": {"description": "Stored", "content": _json("FeedbackResult")},
                        **{
                            str(status): {"description": text, "content": _json("Error")}
                            for status, text in FEEDBACK_STATUSES.items()
                        },
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Whether a model is loaded",
                    "responses": {
                        "200": {"description": "Serving", "content": _json("Health")},
                        "503": {"description": "No model loaded", "content": _json("Health")},
                    },
                }
            },
            "/model": {
                "get": {
                    "summary": "The served version: metrics, commit, chain, family, load time",
                    "responses": _responses("The served version", "ModelInfo", (503,)),
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/drift": {
                "get": {
                    "summary": "Whether the champion's recent inputs drifted from its "
                    "training data",
                    "description": "Per feature group: the effect size (score), the corrected "
                    "p-value, the window tested, and which features moved, which way and "
                    "how far (shift: the median's move in reference standard deviations; "
                    "for the group 'classes', the change of a predicted class's share).",
                    "responses": {
                        "200": {"description": "The latest test", "content": _json("Drift")}
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.0",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": _schemas(shape, max_epochs)},
    }
