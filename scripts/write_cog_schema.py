"""Write .cog/openapi_schema.json from predict.py, as `cog build` would.

Cog's HTTP server (coglet) validates inputs and serves /openapi.json only when this file exists in its working
directory. `cog build` generates it inside the image; for running the server straight from a checkout (tests,
local development) this script generates it from the predictor's signature, read with Cog's own inspector.
A test checks that the committed file stays in step with predict.py.

    python scripts/write_cog_schema.py          # rewrite .cog/openapi_schema.json
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / ".cog" / "openapi_schema.json"

_ANY_JSON = {"application/json": {"schema": {}}}
_VALIDATION_ERROR = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _bound(value: float, json_type: str) -> float | int:
    return int(value) if json_type == "integer" else value


def input_schemas(info) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Input object schema and one enum schema per input with choices."""
    properties, required, enums = {}, [], {}
    for name, field in info.inputs.items():
        json_type = field.type.json_type()
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices is not None:
            prop["allOf"] = [_ref(name)]
            enums[name] = {"title": name, "description": "An enumeration.", "enum": list(field.choices),
                           **field.type.primitive.json_type()}
        else:
            prop["title"] = name.replace("_", " ").title()
            prop.update(json_type)
        if field.default is None:
            if field.type.repetition.name != "OPTIONAL":
                required.append(name)
        else:
            prop["default"] = field.type.json_encode(field.type.normalize(field.default))
        if field.type.repetition.name == "OPTIONAL":
            prop["nullable"] = True
        if field.description is not None:
            prop["description"] = field.description
        if field.ge is not None:
            prop["minimum"] = _bound(field.ge, json_type.get("type", ""))
        if field.le is not None:
            prop["maximum"] = _bound(field.le, json_type.get("type", ""))
        properties[name] = prop
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def build_schema(module: str = "predict", predictor: str = "Predictor") -> dict[str, Any]:
    """The OpenAPI 3.0.2 document Cog serves for `module.predictor`."""
    sys.path.insert(0, str(ROOT))
    from cog._inspector import create_predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        info = create_predictor(module, predictor)
    input_schema, enums = input_schemas(info)
    timestamp = {"type": "string", "format": "date-time"}
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {
            "/": {"get": {"summary": "Root", "operationId": "root__get",
                          "responses": {"200": {"description": "Successful Response", "content": _ANY_JSON}}}},
            "/health-check": {"get": {"summary": "Healthcheck", "operationId": "healthcheck_health_check_get",
                                      "responses": {"200": {"description": "Successful Response",
                                                            "content": _ANY_JSON}}}},
            "/predictions": {"post": {
                "summary": "Predict", "description": "Run a single prediction on the model",
                "operationId": "predict_predictions_post",
                "requestBody": {"content": {"application/json": {"schema": _ref("PredictionRequest")}}},
                "responses": {"200": {"description": "Successful Response",
                                      "content": {"application/json": {"schema": _ref("PredictionResponse")}}},
                              "422": _VALIDATION_ERROR},
            }},
            "/predictions/{prediction_id}/cancel": {"post": {
                "summary": "Cancel", "operationId": "cancel_predictions__prediction_id__cancel_post",
                "parameters": [{"required": True, "schema": {"title": "Prediction Id", "type": "string"},
                                "name": "prediction_id", "in": "path"}],
                "responses": {"200": {"description": "Successful Response", "content": _ANY_JSON},
                              "422": _VALIDATION_ERROR},
            }},
        },
        "components": {"schemas": {
            "Input": input_schema,
            "Output": info.output.json_type(),
            **enums,
            "PredictionRequest": {"title": "PredictionRequest", "type": "object", "properties": {
                "id": {"title": "Id", "type": "string"}, "input": _ref("Input")}},
            "PredictionResponse": {"title": "PredictionResponse", "type": "object", "properties": {
                "input": _ref("Input"), "output": _ref("Output"),
                "id": {"title": "Id", "type": "string"}, "version": {"title": "Version", "type": "string"},
                "created_at": {"title": "Created At", **timestamp},
                "started_at": {"title": "Started At", **timestamp},
                "completed_at": {"title": "Completed At", **timestamp},
                "status": {"title": "Status", "type": "string"}, "error": {"title": "Error", "type": "string"},
                "logs": {"title": "Logs", "type": "string"}, "metrics": {"title": "Metrics", "type": "object"}}},
            "Status": {"title": "Status", "description": "An enumeration.", "type": "string",
                       "enum": ["starting", "processing", "succeeded", "canceled", "failed"]},
            "HTTPValidationError": {"title": "HTTPValidationError", "type": "object", "properties": {
                "detail": {"title": "Detail", "type": "array", "items": _ref("ValidationError")}}},
            "ValidationError": {"title": "ValidationError", "type": "object", "required": ["loc", "msg", "type"],
                                "properties": {
                                    "loc": {"title": "Location", "type": "array",
                                            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                                    "msg": {"title": "Message", "type": "string"},
                                    "type": {"title": "Error Type", "type": "string"}}},
        }},
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main() -> None:
    SCHEMA_PATH.parent.mkdir(exist_ok=True)
    SCHEMA_PATH.write_text(render(build_schema()))
    print(f"wrote {SCHEMA_PATH.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
