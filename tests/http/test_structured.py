"""Structured output, tools and logit_bias through the official `openai` client. The tiny
checkpoints have random weights, so only the constraint makes their output valid: that is
what these tests check."""

import json
import re

import jsonschema
import openai
import pytest

from conftest import SERVED_NAME

SHORT = {"type": "string", "maxLength": 12}

SCHEMAS = [
    {"type": "object", "properties": {"name": SHORT}, "required": ["name"], "additionalProperties": False},
    {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["age"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 1, "maxItems": 4},
    {"type": "object", "properties": {"tags": {"type": "array", "items": SHORT, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "number", "minimum": -1, "maximum": 1}, "y": {"type": "number", "minimum": -1, "maximum": 1}},
        "required": ["x", "y"], "additionalProperties": False}}, "required": ["point"], "additionalProperties": False},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]},
    {"type": "object", "properties": {"v": {"anyOf": [SHORT, {"type": "null"}]}}, "required": ["v"],
     "additionalProperties": False},
    {"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2, 3]},
                                      "label": {"const": "fixed"}}, "required": ["level", "label"]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 999}, "roles": {"type": "array", "items": {
            "enum": ["admin", "dev"]}, "maxItems": 2}}, "required": ["id", "roles"], "additionalProperties": False}},
     "required": ["user"], "additionalProperties": False},
    {"type": "string", "pattern": "^[a-f0-9]{6}$"},
    {"type": "string", "enum": ["yes", "no"]},
    {"type": "integer", "minimum": 10, "maximum": 20},
    {"type": "number", "minimum": 0, "maximum": 1},
    {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"], "additionalProperties": False}, "minItems": 1, "maxItems": 2}},
     "required": ["items"], "additionalProperties": False},
    {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0, "maximum": 3}, {"type": "boolean"}],
     "items": False, "minItems": 2},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 5},
                                      "b": {"type": "integer", "minimum": 0, "maximum": 5}},
     "required": ["a"], "additionalProperties": False},
    {"type": "object", "$defs": {"leaf": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
                                                                               "maximum": 3}},
                                          "required": ["n"], "additionalProperties": False}},
     "properties": {"left": {"$ref": "#/$defs/leaf"}, "right": {"$ref": "#/$defs/leaf"}},
     "required": ["left", "right"], "additionalProperties": False},
    {"type": "null"},
]


def closed(schema):
    """The schema with every object closed to extra keys, as OpenAI's strict mode requires (an
    open object lets a random-weight model invent keys forever)."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if "properties" in schema:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [closed(v) for v in schema]
    return schema


SCHEMAS = [closed(s) for s in SCHEMAS]


def ask(client, stream=False, **kwargs):
    """The answer text (joined from the chunks when streamed) and the finish reason."""
    kwargs.setdefault("max_tokens", 200)
    kwargs.setdefault("temperature", 0)
    messages = kwargs.pop("messages", [{"role": "user", "content": "Answer in JSON."}])
    if not stream:
        r = client.chat.completions.create(model=SERVED_NAME, messages=messages, **kwargs)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, reason = "", None
    for chunk in client.chat.completions.create(model=SERVED_NAME, messages=messages, stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reason = choice.finish_reason or reason
    return text, reason


def json_schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_json_schema_output_validates(client, index, stream):
    schema = SCHEMAS[index]
    text, reason = ask(client, stream=stream, response_format=json_schema_format(schema))
    assert reason == "stop", (reason, text)
    jsonschema.validate(json.loads(text), schema)


def test_schema_holds_for_sampling_and_every_choice(client):
    schema = SCHEMAS[10]
    r = client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "Describe a user."}], n=3, temperature=1.2,
        top_p=0.9, seed=5, max_tokens=200, response_format=json_schema_format(schema),
        extra_body={"top_k": 50, "min_p": 0.01})
    assert len(r.choices) == 3
    for choice in r.choices:
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_mode_with_logit_bias(phi4_server):
    """Any object may have any keys, so a random-weight model never stops writing one; a bias
    towards `"` (1) and `}` (92) in Phi-4's vocabulary ends it, and the grammar keeps it an
    object: the bias and the mask work together."""
    text, reason = ask(phi4_server.client(), response_format={"type": "json_object"}, max_tokens=100,
                       logit_bias={"1": 30, "92": 30})
    assert reason == "stop", text
    assert isinstance(json.loads(text), dict)


def test_regex_and_lark_grammars(client):
    text, _ = ask(client, extra_body={"grammar": {"type": "regex", "value": "(cat|dog)-[0-9]{3}"}})
    assert re.fullmatch(r"(cat|dog)-[0-9]{3}", text), text
    lark = 'start: "answer: " WORD ("," WORD)*\nWORD: /[a-z]{1,5}/'
    text, _ = ask(client, stream=True, extra_body={"grammar": {"type": "lark", "value": lark}})
    assert re.fullmatch(r"answer: [a-z]{1,5}(,[a-z]{1,5})*", text), text


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     None),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"extra_body": {"grammar": {"type": "regex", "value": "(unclosed"}}}, None),
    ({"extra_body": {"grammar": {"type": "lark", "value": "start: undefined_rule"}}}, None),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, None),
])
def test_bad_constraints_are_400(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, **body)
    assert e.value.status_code == 400
    error = e.value.body
    assert error["type"] == "invalid_request_error", error
    if param:
        assert error["param"] == param, error


def test_logit_bias_forces_and_bans_tokens(client):
    """+100 on "▁the" (278) makes every token " the"; -100 on it, with +50 on "▁The" (450),
    makes every token " The": the bias is applied before sampling and before logprobs."""

    def tokens(bias):
        r = client.chat.completions.create(
            model=SERVED_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0,
            logit_bias=bias, logprobs=True, top_logprobs=1)
        return [(t.token.strip(), t.logprob) for t in r.choices[0].logprobs.content]

    forced = tokens({"278": 100, "450": 50})
    assert [t for t, _ in forced] == ["the"] * 6, forced
    assert all(lp > -1e-3 for _, lp in forced), forced
    banned = tokens({"278": -100, "450": 50})
    assert [t for t, _ in banned] == ["The"] * 6, banned


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "integer", "minimum": -12, "maximum": 12}}, "required": ["zone"],
        "additionalProperties": False}}}


def check_calls(calls, allowed):
    assert calls, "no tool calls"
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in allowed}
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in by_name, call
        jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])


@pytest.mark.parametrize("fixture", ["server", "phi4_server"])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_enforced_tool_calls_validate(request, fixture, choice):
    client = request.getfixturevalue(fixture).client()
    tool_choice = "required" if choice == "required" else {"type": "function", "function": {"name": "get_time"}}
    allowed = [WEATHER, TIME] if choice == "required" else [TIME]
    messages = [{"role": "user", "content": "What time is it in Paris?"}]
    # One call: a random-weight model allowed several would repeat calls until max_tokens.
    r = client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=[WEATHER, TIME],
                                       tool_choice=tool_choice, max_tokens=120, temperature=0,
                                       parallel_tool_calls=False)
    assert r.choices[0].finish_reason == "tool_calls", r
    check_calls(r.choices[0].message.tool_calls, allowed)
    if choice == "named":
        assert len(r.choices[0].message.tool_calls) == 1
    # Streamed: the same calls arrive as tool-call deltas.
    calls, reason = {}, None
    for chunk in client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=[WEATHER, TIME],
                                                tool_choice=tool_choice, max_tokens=120, temperature=0,
                                                parallel_tool_calls=False, stream=True):
        for c in chunk.choices:
            reason = c.finish_reason or reason
            for d in c.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
    assert reason == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (t.function.name, json.loads(t.function.arguments)) for t in r.choices[0].message.tool_calls]

    # The call and its result go back into the history; the next turn answers.
    call = r.choices[0].message.tool_calls[0]
    history = messages + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "12:00"},
    ]
    follow = client.chat.completions.create(model=SERVED_NAME, messages=history, max_tokens=4, temperature=0)
    assert follow.choices[0].finish_reason in ("stop", "length")


def test_phi35_refuses_auto_tool_choice_and_unknown_tools(client):
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=[WEATHER], max_tokens=4)
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=[WEATHER], max_tokens=4,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "not among the tools" in e.value.body["message"]
    # tool_choice none: the tools are left out and the answer is text.
    r = client.chat.completions.create(model=SERVED_NAME, messages=messages, tools=[WEATHER], tool_choice="none",
                                       max_tokens=4)
    assert r.choices[0].message.tool_calls is None


def test_phi4_auto_tool_choice_answers(phi4_server):
    r = phi4_server.client().chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER], max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_api_text_format_json_schema(client, stream):
    schema = SCHEMAS[6]
    fmt = {"format": {"type": "json_schema", "name": "point", "schema": schema, "strict": True}}
    if not stream:
        r = client.responses.create(model=SERVED_NAME, input="A point?", text=fmt, max_output_tokens=120,
                                    temperature=0)
        text = r.output_text
    else:
        text = "".join(e.delta for e in client.responses.create(
            model=SERVED_NAME, input="A point?", text=fmt, max_output_tokens=120, temperature=0, stream=True)
            if e.type == "response.output_text.delta")
    jsonschema.validate(json.loads(text), schema)
