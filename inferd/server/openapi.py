"""The OpenAPI 3.1 document of every HTTP endpoint, written by hand as data and served at `GET /openapi.json`.

It describes what the transports really do: request bodies, response bodies, status codes and error shapes
(V2 `{"error": "..."}`; OpenAI and admin `{"error": {"message", "type", "param", "code"}}`). The fuzz tests
(`tests/fuzz`) run Schemathesis against a live server with it, so a response the document does not allow is a
test failure: change the document and the transport together.

Response objects are closed (`additionalProperties: false`) so an undocumented field is caught; request
objects are open where the server ignores unknown fields (OpenAI bodies, V2 infer) and closed where it refuses
them (admin bodies).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferd import __version__

Schema = dict[str, Any]

DATATYPES = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip
MODEL_EXAMPLES = ["identity_fp32", "add_sub", "versioned", "tiny-embed", "tiny-llama"]
"""Examples of model names, from the fuzz tests' repository (`tests/fuzz`)."""
TENANT = "fuzz-tenant"
"""The tenant the admin examples use (the fuzz tests create it)."""
_ERROR_TEXT = {
    400: "The request is malformed or does not match the model; the message names the problem.",
    401: "No API key, or an unknown, expired or disabled one.",
    403: "The key lacks the role the operation needs.",
    404: "Unknown model, version or resource (also one the key may not see).",
    413: "The request body (decompressed) is over the server's limit.",
    429: "Refused for a rate, concurrency, queue or budget limit; `retry-after` when retryable.",
    503: "The model or the server cannot serve now.",
    504: "The request's deadline expired before its work ran.",
}
_INT: Schema = {"type": "integer"}
_NUM: Schema = {"type": "number"}
_STR: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_ANY_OBJECT: Schema = {"type": "object"}
_TIME: Schema = {"type": "number", "description": "Unix seconds."}


# -- helpers -------------------------------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _closed(optional: tuple[str, ...] = (), /, **props: Schema) -> Schema:
    """A response object: exactly these fields, all present but `optional`."""
    required = [p for p in props if p not in optional]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _open(required: tuple[str, ...] = (), /, **props: Schema) -> Schema:
    """A request object whose unknown fields the server ignores."""
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def _array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def _null(kind: str | list[str], **extra: Any) -> Schema:
    kinds = [kind] if isinstance(kind, str) else kind
    return {"type": [*kinds, "null"], **extra}


def _int(minimum: int | None = None, maximum: int | None = None) -> Schema:
    bounds = {"minimum": minimum, "maximum": maximum}
    return {"type": "integer", **{k: v for k, v in bounds.items() if v is not None}}


def _json(schema: Schema, **extra: Any) -> Schema:
    return {"content": {"application/json": {"schema": schema, **extra}}}


def _body(schema: Schema, examples: dict[str, Any] | None = None, required: bool = True) -> Schema:
    extra = {"examples": {k: {"value": v} for k, v in examples.items()}} if examples else {}
    return {"required": required, **_json(schema, **extra)}


_REQUEST_ID = {"x-request-id": {"$ref": "#/components/headers/RequestId"}}


def _ok(description: str, schema: Schema | None = None, *, request_id: bool = True) -> Schema:
    response: Schema = {"description": description}
    if schema is not None:
        response.update(_json(schema))
    if request_id:
        response["headers"] = dict(_REQUEST_ID)
    return response


def _errors(family: str, *codes: int) -> dict[str, Schema]:
    return {str(c): {"$ref": f"#/components/responses/{family}Error{c}"} for c in codes}


def _param(name: str, where: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


def _path(name: str, examples: list[str], description: str) -> Schema:
    return _param(name, "path", {"type": "string", "minLength": 1, "examples": examples}, description, True)


def _op(
    op_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Schema],
    body: Schema | None = None,
    params: list[Schema] | None = None,
    public: bool = False,
) -> Schema:
    op: Schema = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


# -- components: V2 ------------------------------------------------------------------------------------------

_DURATION = _closed(count=_INT, ns=_INT)
_DATATYPE = {"enum": DATATYPES}
_TENSOR_META = _closed(name=_STR, datatype=_DATATYPE, shape=_array(_INT))
_TENSOR_CONFIG = _closed(name=_STR, data_type=_STR, dims=_array(_INT))
_VERSION_STATS = _closed(
    ("last_inference", "batch_stats"),
    name=_STR,
    version=_STR,
    last_inference=_INT,
    inference_count=_INT,
    execution_count=_INT,
    inference_stats={"type": "object", "additionalProperties": _DURATION},
    batch_stats=_array(
        _closed(batch_size=_INT, compute_input=_DURATION, compute_infer=_DURATION, compute_output=_DURATION)
    ),
)
_REQUEST_INPUT = _open(
    ("name", "datatype", "shape"),
    name=_STR,
    datatype=_DATATYPE,
    shape=_array(_int(0), maxItems=32),
    parameters=_open(binary_data_size=_int(0)),
    data={
        "description": "Elements in row-major order: a flat or nested list (or one scalar) of numbers, "
        "booleans or strings (BYTES).",
        "anyOf": [{"type": "array"}, _NUM, _BOOL, _STR],
    },
)
_V2_SCHEMAS: dict[str, Schema] = {
    "V2Error": _closed(error=_STR),
    "Live": _closed(live=_BOOL),
    "Ready": _closed(ready=_BOOL),
    "ServerMetadata": _closed(name=_STR, version=_STR, extensions=_array(_STR)),
    "ModelMetadata": _closed(
        ("parameters",),
        name=_STR,
        versions=_array(_STR),
        platform=_STR,
        inputs=_array(_TENSOR_META),
        outputs=_array(_TENSOR_META),
        parameters=_closed(sha256=_STR),
    ),
    "ModelReady": _closed(name=_STR, ready=_BOOL),
    "ModelConfig": _closed(
        ("backend", "instance_group", "version_policy", "parameters", "dynamic_batching"),
        name=_STR,
        platform=_STR,
        backend=_STR,
        max_batch_size=_INT,
        input=_array(_TENSOR_CONFIG),
        output=_array(_TENSOR_CONFIG),
        instance_group=_array(_closed(name=_STR, count=_INT, kind=_STR)),
        version_policy=_ANY_OBJECT,
        parameters=_ANY_OBJECT,
        dynamic_batching=_ANY_OBJECT,
    ),
    "ModelStatistics": _closed(model_stats=_array(_VERSION_STATS)),
    "InferRequest": _open(
        ("inputs",),
        id=_STR,
        parameters={
            **_open(timeout=_int(0), priority=_int(0), binary_data_output=_BOOL),
            "description": "Free-form; known: `timeout` (microseconds), `priority`, `binary_data_output`.",
        },
        inputs=_array(_REQUEST_INPUT, minItems=1),
        outputs=_array(_open(("name",), name=_STR, parameters=_open(binary_data=_BOOL))),
    ),
    "InferResponse": _closed(
        ("id",),
        model_name=_STR,
        model_version=_STR,
        id=_STR,
        outputs=_array(
            _closed(
                ("data", "parameters"),
                name=_STR,
                datatype=_DATATYPE,
                shape=_array(_INT),
                data=_array({"type": ["number", "boolean", "string"]}),
                parameters=_closed(binary_data_size=_INT),
            )
        ),
    ),
    "RepositoryIndexRequest": _open(ready={"type": "boolean", "description": "Only the ready models."}),
    "RepositoryIndex": _array(
        _closed(
            ("version", "state", "reason"),
            name=_STR,
            version=_STR,
            state={"enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
            reason=_STR,
        )
    ),
}


# -- components: OpenAI --------------------------------------------------------------------------------------

_TOKEN_IDS = _array(_int(0))
_SAMPLING: dict[str, Schema] = {
    "model": _STR,
    "n": _int(1, 128),
    "temperature": {"type": "number", "minimum": 0},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "top_k": _INT,
    "min_p": {"type": "number", "minimum": 0, "maximum": 1},
    "seed": _null("integer"),
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "repetition_penalty": {"type": "number", "exclusiveMinimum": 0},
    "max_tokens": _null("integer", minimum=1),
    "min_tokens": _int(0),
    "stop": {"anyOf": [_STR, _array(_STR, maxItems=16), {"type": "null"}]},
    "stop_token_ids": _TOKEN_IDS,
    "ignore_eos": _BOOL,
    "stream": _BOOL,
    "stream_options": _null("object", properties={"include_usage": _BOOL}),
    "skip_special_tokens": _BOOL,
    "user": _STR,
}
_USAGE = _closed(
    ("prompt_tokens_details", "cost"),
    prompt_tokens=_INT,
    completion_tokens=_INT,
    total_tokens=_INT,
    prompt_tokens_details=_closed(cached_tokens=_INT),
    cost=_NUM,
)
_CHOICE_END = {"finish_reason": _null("string"), "stop_reason": _null(["string", "integer"])}
_COMPLETION_LOGPROBS = _closed(
    tokens=_array(_STR),
    token_logprobs=_array(_NUM),
    top_logprobs=_array({"type": "object", "additionalProperties": _NUM}),
    text_offset=_array(_INT),
)
_CHAT_LOGPROBS = _closed(content=_array(_ANY_OBJECT))
_TEXT_PART = _open(("type", "text"), type={"const": "text"}, text=_STR)
_MESSAGE = _open(("role",), role=_STR, content={"anyOf": [_STR, {"type": "null"}, _array(_TEXT_PART)]})
_OPENAI_SCHEMAS: dict[str, Schema] = {
    "OpenAIError": _closed(
        error=_closed(message=_STR, type=_STR, param=_null("string"), code=_null("string"))
    ),
    "ModelList": _closed(
        object={"const": "list"},
        data=_array(_closed(id=_STR, object={"const": "model"}, created=_INT, owned_by=_STR)),
    ),
    "CompletionRequest": _open(
        ("model", "prompt"),
        **_SAMPLING,
        prompt={
            "anyOf": [
                _STR,
                _array(_STR, minItems=1, maxItems=2048),
                _array(_int(0), minItems=1),
                _array(_TOKEN_IDS, minItems=1, maxItems=2048),
            ]
        },
        logprobs=_null("integer", minimum=0, maximum=20),
        echo={"const": False},
        best_of=_null("integer", minimum=1),
    ),
    "Completion": _closed(
        id=_STR,
        object={"const": "text_completion"},
        created=_INT,
        model=_STR,
        choices=_array(
            _closed(
                ("stop_reason",),
                index=_INT,
                text=_STR,
                logprobs={"anyOf": [_COMPLETION_LOGPROBS, {"type": "null"}]},
                **_CHOICE_END,
            )
        ),
        usage=_USAGE,
    ),
    "ChatCompletionRequest": _open(
        ("model", "messages"),
        **_SAMPLING,
        messages=_array(_MESSAGE, minItems=1),
        logprobs=_BOOL,
        top_logprobs=_int(0, 20),
        max_completion_tokens=_null("integer", minimum=1),
        add_generation_prompt=_BOOL,
    ),
    "ChatCompletion": _closed(
        id=_STR,
        object={"const": "chat.completion"},
        created=_INT,
        model=_STR,
        choices=_array(
            _closed(
                ("stop_reason",),
                index=_INT,
                message=_closed(role={"const": "assistant"}, content=_STR),
                logprobs={"anyOf": [_CHAT_LOGPROBS, {"type": "null"}]},
                **_CHOICE_END,
            )
        ),
        usage=_USAGE,
    ),
    "StreamEvent": {
        **_open(("data",), data=_STR),
        "description": "One server-sent event: `data:` a JSON chunk, an error object, or `[DONE]`.",
    },
    "EmbeddingsRequest": _open(
        ("model", "input"),
        model=_STR,
        input={"anyOf": [_STR, _array(_STR, minItems=1, maxItems=2048)]},
        encoding_format={"enum": ["float", "base64"]},
        user=_STR,
    ),
    "Embeddings": _closed(
        object={"const": "list"},
        data=_array(
            _closed(object={"const": "embedding"}, index=_INT, embedding={"anyOf": [_array(_NUM), _STR]})
        ),
        model=_STR,
        usage=_closed(prompt_tokens=_INT, total_tokens=_INT),
    ),
}


# -- components: admin ---------------------------------------------------------------------------------------

_LIMITS = {name: _null("integer", minimum=1) for name in ("rpm", "tpm", "max_concurrent", "max_tokens")}
_PAYLOAD_LOGGING = {"enum": ["none", "metadata", "full"]}
_ROLES = {"enum": ["admin", "user"]}
_SCOPE = {"enum": ["tenant", "workflow"]}
_PERIOD = {"enum": ["day", "month", "total"]}
_TIER = {"enum": ["interactive", "batch"]}
_KEY_FIELDS = {
    "key_id": _STR,
    "tenant": _STR,
    "name": _STR,
    "roles": _array(_ROLES),
    "models": _array(_STR),
    "limits": _closed(**_LIMITS),
    "expires_at": _null("number"),
    "disabled": _BOOL,
    "created": _TIME,
    "priority": _TIER,
}
_BUDGET_FIELDS = {
    "tenant": _STR,
    "scope": _SCOPE,
    "period": _PERIOD,
    "max_tokens": _null("integer", minimum=0),
    "max_cost": _null("number", minimum=0),
    "max_requests": _null("integer", minimum=0),
}
_PRICE_FIELDS = {
    "model": _STR,
    **{
        name: {"type": "number", "minimum": 0}
        for name in ("prompt_per_1k", "completion_per_1k", "per_inference")
    },
}
_ADMIN_SCHEMAS: dict[str, Schema] = {
    # Admin request bodies are strict: an unknown field is a 400 naming it.
    "TenantSpec": _closed(
        (*_LIMITS, "payload_logging", "disabled"),
        **_LIMITS,
        payload_logging=_PAYLOAD_LOGGING,
        disabled=_BOOL,
    ),
    "Tenant": _closed(name=_STR, **_LIMITS, payload_logging=_PAYLOAD_LOGGING, disabled=_BOOL, created=_TIME),
    "KeySpec": _closed(
        ("models", "roles", *_LIMITS, "expires_in_s", "expires_at", "name", "priority"),
        tenant=_STR,
        models=_array({"type": "string", "minLength": 1}, minItems=1),
        roles=_array(_ROLES, minItems=1),
        **_LIMITS,
        expires_in_s=_null("number", minimum=0),
        expires_at=_null("number"),
        name=_STR,
        priority={"anyOf": [_TIER, {"type": "null"}]},
    ),
    "KeyPatch": _closed(
        ("disabled", "models", "expires_at", "name", "priority"),
        disabled=_null("boolean"),
        models=_null("array", items=_STR, minItems=1),
        expires_at=_null("number", description="Unix time; 0 removes the expiry."),
        name=_null("string"),
        priority={"anyOf": [_TIER, {"type": "null"}]},
    ),
    "Key": _closed(**_KEY_FIELDS),
    "CreatedKey": _closed(
        key={"type": "string", "description": "The API key; shown only here."}, **_KEY_FIELDS
    ),
    "BudgetSpec": _closed(tuple(_BUDGET_FIELDS)[1:], **_BUDGET_FIELDS),
    "Budget": _closed(
        ("note", "used_tokens", "used_cost", "used_requests", "in_flight_tokens", "resets_at"),
        **_BUDGET_FIELDS,
        note=_STR,
        used_tokens=_INT,
        used_cost=_NUM,
        used_requests=_INT,
        in_flight_tokens=_INT,
        resets_at=_null("number"),
    ),
    "PriceSpec": _closed(tuple(_PRICE_FIELDS)[1:], **_PRICE_FIELDS),
    "Price": _closed(**_PRICE_FIELDS),
    "UsageRow": {
        **_open(
            ("requests", "prompt_tokens", "completion_tokens", "cost", "errors"),
            requests=_INT,
            prompt_tokens=_INT,
            completion_tokens=_INT,
            cached_tokens=_INT,
            cost=_NUM,
            errors=_INT,
            retries=_INT,
            retry_rate=_NUM,
            mean_latency_ms=_NUM,
        ),
        "description": "Usage of one group; the group's value is under the `by` name.",
    },
    "AuditEntry": _closed(
        time=_TIME,
        action=_STR,
        tenant=_STR,
        key_id=_STR,
        target=_STR,
        outcome=_STR,
        request_id=_STR,
        detail=_ANY_OBJECT,
    ),
}


def _error_responses() -> dict[str, Schema]:
    responses: dict[str, Schema] = {}
    for family in ("V2", "OpenAI"):
        for code, text in _ERROR_TEXT.items():
            headers: Schema = dict(_REQUEST_ID)
            if code == 401:
                headers["www-authenticate"] = {"schema": {"const": "Bearer"}}
            if code == 429:
                headers["retry-after"] = {"description": "Seconds to wait (when retryable).", "schema": _STR}
            schema = _ref(f"{family}Error")
            responses[f"{family}Error{code}"] = {"description": text, "headers": headers, **_json(schema)}
    return responses


# -- paths: V2 -----------------------------------------------------------------------------------------------

_MODEL = _path("model", MODEL_EXAMPLES, "The model's name.")
_VERSION = _path("version", ["1", "2"], "A version number of the model.")
_FP32_INPUT = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": _ref("InferRequest"),
            "examples": {
                "fp32": {"value": {"inputs": [_FP32_INPUT]}},
                "binary_output": {
                    "value": {
                        "id": "x",
                        "inputs": [_FP32_INPUT],
                        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
                    }
                },
            },
        },
        "application/octet-stream": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "The binary tensor extension: a JSON header of "
                "`Inference-Header-Content-Length` bytes, then each input's bytes in order.",
            }
        },
    },
}
_HEADER_LENGTH = _param(
    "Inference-Header-Content-Length", "header", _int(1), "Length of the JSON header of a binary body."
)
_CALL_HEADERS = [
    _param(name, "header", schema, description)
    for name, schema, description in (
        ("x-request-id", _STR, "The request's id (kept when printable and at most 128 characters)."),
        ("x-inferd-workflow", _STR, "The workflow the call is accounted to (budgets per workflow)."),
        ("idempotency-key", _STR, "Repeats of a key are recorded as retries of its first request."),
        ("x-inferd-retry-of", _STR, "The request id this call retries."),
        ("x-inferd-priority", _TIER, "The request's tier (default: the key's, else interactive)."),
        ("x-inferd-timeout-ms", _STR, "Milliseconds the client waits (a positive number)."),
    )
]
_INFER_HEADERS = [_HEADER_LENGTH, *_CALL_HEADERS]
_INFER_RESPONSES = {
    "200": {
        "description": "The outputs: JSON, or (binary outputs) a JSON header then the output bytes.",
        "headers": {**_REQUEST_ID, "Inference-Header-Content-Length": {"schema": _STR}},
        "content": {
            "application/json": {"schema": _ref("InferResponse")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **_errors("V2", 400, 401, 404, 413, 429, 503, 504),
}
_READY_RESPONSES = {
    "200": _ok("The model is ready.", _ref("ModelReady"), request_id=False),
    "503": {
        "description": "The model is not ready (or not visible to the key).",
        "headers": {"x-inferd-reason": {"description": "Why, when known.", "schema": _STR}},
        **_json(_ref("ModelReady")),
    },
    **_errors("V2", 400, 401),
}


def _v2_get(op_id: str, summary: str, schema: str, *codes: int, public: bool = False) -> Schema:
    ok = _ok(summary, _ref(schema), request_id=False)
    return {"get": _op(op_id, summary, "V2", {"200": ok, **_errors("V2", *codes)}, public=public)}


def _v2_paths() -> dict[str, Schema]:
    ready = _v2_get("v2Ready", "Server readiness.", "Ready", public=True)
    ready["get"]["responses"]["503"] = {"description": "Not ready.", **_json(_ref("Ready"))}
    index = _ok("The index.", _ref("RepositoryIndex"), request_id=False)
    paths: dict[str, Schema] = {
        "/v2/health/live": _v2_get("v2Live", "Liveness.", "Live", public=True),
        "/v2/health/ready": ready,
        "/v2": _v2_get("v2ServerMetadata", "Server metadata.", "ServerMetadata", public=True),
        "/v2/models/stats": _v2_get("v2AllStats", "Statistics of every model.", "ModelStatistics", 401),
        "/v2/repository/index": {
            "post": _op(
                "v2RepositoryIndex",
                "The repository index (the models the key may see).",
                "V2",
                {"200": index, **_errors("V2", 400, 401, 413)},
                body=_body(_ref("RepositoryIndexRequest"), required=False),
            )
        },
    }
    model_paths = (("", [_MODEL], "Model"), ("/versions/{version}", [_MODEL, _VERSION], "Version"))
    for suffix, op_id, summary, schema in (
        ("", "Metadata", "Model metadata.", "ModelMetadata"),
        ("/config", "Config", "Model configuration (Triton's model_config fields).", "ModelConfig"),
        ("/stats", "Stats", "Model statistics.", "ModelStatistics"),
    ):
        for prefix, params, kind in model_paths:
            item = _v2_get(f"v2{kind}{op_id}", summary, schema, 400, 401, 404, 503)
            paths[f"/v2/models/{{model}}{prefix}{suffix}"] = {"parameters": params, **item}
    for prefix, params, kind in model_paths:
        paths[f"/v2/models/{{model}}{prefix}/ready"] = {
            "parameters": params,
            "get": _op(f"v2{kind}Ready", "Model readiness.", "V2", _READY_RESPONSES),
        }
        paths[f"/v2/models/{{model}}{prefix}/infer"] = {
            "parameters": params,
            "post": _op(f"v2{kind}Infer", "Inference.", "V2", _INFER_RESPONSES, _INFER_BODY, _INFER_HEADERS),
        }
    # The fuzz tests' repository keeps `spare` for load and unload, which other operations do not use.
    spare = _path("model", ["spare"], "The model's name.")
    for action in ("Load", "Unload"):
        paths[f"/v2/repository/models/{{model}}/{action.lower()}"] = {
            "parameters": [spare],
            "post": _op(
                f"v2Repository{action}",
                f"{action} a model (admin).",
                "V2",
                {"200": {"description": "Done."}, **_errors("V2", 400, 401, 403, 404, 413)},
                body=_body(_ANY_OBJECT, required=False),
            ),
        }
    return paths


# -- paths: OpenAI, admin, the rest --------------------------------------------------------------------------


def _openai_paths() -> dict[str, Schema]:
    errors = _errors("OpenAI", 400, 401, 404, 413, 429, 503, 504)

    def generation(op_id: str, summary: str, response: str, example: Schema) -> Schema:
        ok = _ok("The completion, or its chunks as server-sent events when `stream` is true.")
        ok["content"] = {
            "application/json": {"schema": _ref(response)},
            "text/event-stream": {"schema": _ref("StreamEvent")},
        }
        body = _body(_ref(f"{response}Request"), {"short": example})
        return {"post": _op(op_id, summary, "OpenAI", {"200": ok, **errors}, body, _CALL_HEADERS)}

    completion = {"model": "tiny-llama", "prompt": "ka lo mi", "max_tokens": 4}
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "ka lo"}], "max_tokens": 4}
    embeddings = _ok("The embeddings.", _ref("Embeddings"))
    return {
        "/v1/models": {
            "get": _op(
                "openaiModels",
                "The LLMs and embedding models the key may use.",
                "OpenAI",
                {"200": _ok("The models.", _ref("ModelList")), **_errors("OpenAI", 401)},
            )
        },
        "/v1/completions": generation("openaiCompletions", "Text completion.", "Completion", completion),
        "/v1/chat/completions": generation(
            "openaiChatCompletions", "Chat completion.", "ChatCompletion", chat
        ),
        "/v1/embeddings": {
            "post": _op(
                "openaiEmbeddings",
                "Embeddings of texts.",
                "OpenAI",
                {"200": embeddings, **errors},
                _body(_ref("EmbeddingsRequest"), {"two": {"model": "tiny-embed", "input": ["a", "b"]}}),
                _CALL_HEADERS,
            )
        },
    }


def _admin_paths() -> dict[str, Schema]:
    base = "/admin/v1"
    codes = (400, 401, 403, 404, 503)

    examples: dict[str, Schema] = {
        "TenantSpec": {"rpm": 60},
        "KeySpec": {"tenant": TENANT},
        "BudgetSpec": {"tenant": TENANT, "max_tokens": 10},
        "PriceSpec": {"model": "fuzz-model", "per_inference": 0.5},
    }

    def op(op_id: str, summary: str, ok: Schema | None, body: str | None = None, **kw: Any) -> Schema:
        responses = {"200": ok} if ok is not None else {"204": _ok("Done.")}
        all_codes = (*codes, 413) if body else codes
        request = (
            _body(_ref(body), {"example": examples[body]} if body in examples else None) if body else None
        )
        return _op(op_id, summary, "admin", {**responses, **_errors("OpenAI", *all_codes)}, request, **kw)

    def ok(schema: Schema) -> Schema:
        return _ok("The result.", schema)

    def many(name: str) -> Schema:
        return ok(_array(_ref(name)))

    tenant_q = _param("tenant", "query", _STR, "Only this tenant (a user key sees only its own).")
    since_q = _param(
        "since", "query", _STR, "`7d`, `24h`, `30m`, `90s`, an ISO date or time, or unix seconds."
    )
    by_q = _param("by", "query", {"enum": ["model", "workflow", "day", "key", "tenant"]}, "Default `model`.")
    limit_q = _param("limit", "query", _int(1, 100_000), "Default 1000.")
    budget_q = [
        {**tenant_q, "required": True},
        _param("scope", "query", _SCOPE, "Default `tenant`."),
        _param("period", "query", _PERIOD, "Default `month`."),
    ]
    return {
        f"{base}/tenants": {"get": op("adminListTenants", "Tenants.", many("Tenant"))},
        f"{base}/tenants/{{name}}": {
            "parameters": [_path("name", ["fuzz-other"], "The tenant's name.")],
            "get": op("adminGetTenant", "A tenant.", ok(_ref("Tenant"))),
            "put": op("adminPutTenant", "Create or replace a tenant.", ok(_ref("Tenant")), "TenantSpec"),
            "delete": op("adminDeleteTenant", "Delete a tenant (not one's own).", None),
        },
        f"{base}/keys": {
            "get": op(
                "adminListKeys", "API keys (a user key: its tenant's).", many("Key"), params=[tenant_q]
            ),
            "post": op("adminCreateKey", "Create an API key.", ok(_ref("CreatedKey")), "KeySpec"),
        },
        f"{base}/keys/{{key_id}}": {
            "parameters": [_path("key_id", ["0123456789abcdef"], "The key's id (hex).")],
            "patch": op("adminUpdateKey", "Update an API key.", ok(_ref("Key")), "KeyPatch"),
            "delete": op("adminRevokeKey", "Revoke an API key (not the caller's).", None),
        },
        f"{base}/budgets": {
            "get": op("adminListBudgets", "Budgets and their use.", many("Budget"), params=[tenant_q]),
            "put": op("adminSetBudget", "Set a budget.", ok(_ref("Budget")), "BudgetSpec"),
            "delete": op("adminDeleteBudget", "Delete a budget.", None, params=budget_q),
        },
        f"{base}/prices": {
            "get": op("adminListPrices", "Prices.", many("Price")),
            "put": op("adminSetPrice", "Set a price.", ok(_ref("Price")), "PriceSpec"),
        },
        f"{base}/prices/{{model}}": {
            "parameters": [_path("model", ["fuzz-model", "*"], "The model (`*`: the default price).")],
            "delete": op("adminDeletePrice", "Delete a price.", None),
        },
        f"{base}/usage": {
            "get": op("adminUsage", "Usage per group.", many("UsageRow"), params=[tenant_q, since_q, by_q])
        },
        f"{base}/audit": {
            "get": op(
                "adminAudit",
                "The audit log.",
                many("AuditEntry"),
                params=[tenant_q, since_q, _param("action", "query", _STR, "Only this action."), limit_q],
            )
        },
    }


def _misc_paths() -> dict[str, Schema]:
    metrics = {"description": "Prometheus text format.", "content": {"text/plain": {"schema": _STR}}}
    document = {"description": "OpenAPI 3.1.", **_json(_ANY_OBJECT)}
    return {
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics (admin keys: they name every tenant and its spend).",
                "observability",
                {"200": metrics, **_errors("V2", 401, 403)},
            )
        },
        "/openapi.json": {
            "get": _op("openapi", "This document.", "observability", {"200": document}, public=True)
        },
    }


def build() -> Schema:
    """The document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "inferd",
            "version": __version__,
            "description": "The V2 / Open Inference Protocol REST API for tensor models, the OpenAI API for "
            "LLMs and embedding models, and the admin API of governance. Authentication: an API key as "
            "`Authorization: Bearer <key>` or in `x-api-key`.",
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {**_v2_paths(), **_openai_paths(), **_admin_paths(), **_misc_paths()},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
            "headers": {"RequestId": {"description": "The request's id.", "schema": _STR}},
            "schemas": {**_V2_SCHEMAS, **_OPENAI_SCHEMAS, **_ADMIN_SCHEMAS},
            "responses": _error_responses(),
        },
    }


def route() -> Route:
    """`GET /openapi.json` (no authentication: the document holds no secret)."""
    body = orjson.dumps(build())

    async def serve(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route("/openapi.json", serve, methods=["GET"])
