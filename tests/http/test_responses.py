"""`POST /v1/responses` through the official client's `client.responses.create`: the answer
equals the chat-completions answer for the same conversation, streams carry OpenAI's typed
events in order, and what needs stored state is a 400 naming the field."""

import openai
import pytest

from conftest import IMAGES, SERVED_NAME


def chat_answer(client, messages, max_tokens=8):
    r = client.chat.completions.create(model=SERVED_NAME, messages=messages, max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content, r.usage


def create(client, **kwargs):
    kwargs.setdefault("max_output_tokens", 8)
    return client.responses.create(model=SERVED_NAME, temperature=0, **kwargs)


def test_non_streamed_equals_chat(client):
    r = create(client, input="Describe a sunset over the ocean.", metadata={"k": "v"}, user="u1")
    text, usage = chat_answer(client, [{"role": "user", "content": "Describe a sunset over the ocean."}])
    assert r.output_text == text
    assert r.id.startswith("resp_") and r.object == "response" and r.model == SERVED_NAME
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    message = r.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert r.usage.input_tokens == usage.prompt_tokens
    assert r.usage.output_tokens == 8 and r.usage.total_tokens == usage.prompt_tokens + 8
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.metadata == {"k": "v"} and r.user == "u1" and r.store is False and r.max_output_tokens == 8


def test_instructions_and_roles_equal_chat(client):
    r = create(client, instructions="Be brief.", input=[
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hi there."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Tell me more."}]},
    ])
    text, _ = chat_answer(client, [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": "Tell me more."},
    ])
    assert r.output_text == text
    assert r.instructions == "Be brief."


def test_image_input_equals_chat(client):
    path = str(IMAGES / "tiny_50x50.png")
    r = create(client, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": path},
        {"type": "input_text", "text": "What is in this picture?"},
    ]}])
    text, usage = chat_answer(client, [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": path}},
        {"type": "text", "text": "What is in this picture?"},
    ]}])
    assert r.output_text == text
    assert r.usage.input_tokens == usage.prompt_tokens


def test_stream_events_in_order_and_deltas_join_to_the_text(client):
    whole = create(client, input="Write a haiku.", max_output_tokens=12)
    events = list(create(client, input="Write a haiku.", max_output_tokens=12, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text
    assert events[-4].text == whole.output_text
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == 12
    assert events[0].response.status == "in_progress" and final.status == "incomplete"
    assert len({e.item_id for e in events if hasattr(e, "item_id")}) == 1


def test_completed_when_the_model_stops(client):
    # With the tiny checkpoint, greedy decoding of "Yes" meets a stop token after 54 tokens.
    r = create(client, input="Yes", max_output_tokens=100)
    text, _ = chat_answer(client, [{"role": "user", "content": "Yes"}], max_tokens=100)
    assert r.output_text == text
    assert r.usage.output_tokens < 100
    assert r.status == "completed" and r.incomplete_details is None and r.output[0].status == "completed"


@pytest.mark.parametrize("field, value", [
    ("previous_response_id", "resp_123"),
    ("conversation", "conv_123"),
    ("background", True),
    ("tools", [{"type": "web_search"}]),
])
def test_stateful_features_are_400_naming_the_field(client, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        create(client, input="Hi", **{field: value})
    assert e.value.status_code == 400
    assert e.value.param == field
    if field != "tools":
        assert "stateless" in e.value.message


def test_store_true_is_served_without_storing(client):
    assert create(client, input="Hi", store=True, max_output_tokens=2).store is False


def test_bad_input_is_400_naming_the_item(client):
    with pytest.raises(openai.BadRequestError) as e:
        create(client, input=[{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}])
    assert e.value.param == "input[0].content[0]"
