"""phive serve driven by the official `openai` Python client."""

import base64
import json
import subprocess

import openai
import pytest

from conftest import GOLDENS, IMAGES, MODEL, PHIVE, SERVED_NAME


def image_b64(name: str) -> str:
    return base64.b64encode((IMAGES / name).read_bytes()).decode()


def with_image(url: str, text: str = "What is in this picture?"):
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": text},
    ]}]


def answer(client, messages, **kwargs):
    kwargs.setdefault("max_tokens", 8)
    r = client.chat.completions.create(model=SERVED_NAME, messages=messages, **kwargs)
    return r.choices[0].message.content


def test_non_streamed_chat(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "Hello"}], max_tokens=5)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == SERVED_NAME
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_with_usage_matches_non_stream(client):
    messages = [{"role": "user", "content": "Describe a sunset over the ocean in two sentences."}]
    whole = answer(client, messages, max_tokens=16)
    stream = client.chat.completions.create(model=SERVED_NAME, messages=messages, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 16
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == whole


def test_greedy_matches_golden(client):
    case = json.loads(GOLDENS.read_text())["cases"][0]
    assert answer(client, case["openai_messages"], max_tokens=16) == case["greedy_text"]


def test_image_sources_agree(client):
    reference = answer(client, with_image(str(IMAGES / "tiny_50x50.png")))
    assert answer(client, with_image("data:image/png;base64," + image_b64("tiny_50x50.png"))) == reference
    assert answer(client, with_image(image_b64("tiny_50x50.png"))) == reference
    assert answer(client, with_image("file://" + str(IMAGES / "tiny_50x50.png"))) == reference


def test_http_url_image_with_allow_private_urls(open_server, image_server, client):
    reference = answer(client, with_image(str(IMAGES / "tiny_50x50.png")))
    assert answer(open_server.client(), with_image(image_server + "/tiny_50x50.png")) == reference


def test_refused_local_path(client):
    with pytest.raises(openai.BadRequestError) as e:
        answer(client, with_image(str(MODEL / "config.json")))
    assert "--allow-local-media" in str(e.value)
    assert e.value.status_code == 400


def test_refused_private_url(client, image_server):
    with pytest.raises(openai.BadRequestError) as e:
        answer(client, with_image(image_server + "/tiny_50x50.png"))
    assert "--allow-private-urls" in str(e.value)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.code == "model_not_found"


def test_bad_value_is_400_with_param(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "Hi"}], temperature=3)
    assert e.value.param == "temperature"


def test_logprobs(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "Describe a cat."}],
                                       max_tokens=6, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert 0 < len(content) <= 6
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob <= 0


def test_n_choices(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "Tell me a story."}],
                                       max_tokens=8, n=3, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 1, "greedy choices agree"


def test_stop_strings(client):
    case = json.loads(GOLDENS.read_text())["cases"][0]
    greedy = case["greedy_text"]
    stop = " " + greedy.split(" ")[4]  # the golden answer's fifth word
    r = client.chat.completions.create(model=SERVED_NAME, messages=case["openai_messages"], max_tokens=16,
                                       stop=[stop])
    assert r.choices[0].message.content == greedy[: greedy.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_seed_reproducibility(client):
    kwargs = dict(messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12, temperature=1.0)
    a = answer(client, seed=5, **kwargs)
    b = answer(client, seed=5, **kwargs)
    c = answer(client, seed=6, **kwargs)
    assert a == b
    assert a != c


def test_text_completion(client):
    r = client.completions.create(model=SERVED_NAME, prompt="Once upon a time", max_tokens=5)
    assert r.object == "text_completion"
    assert r.usage.completion_tokens <= 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=SERVED_NAME, prompt="Once upon a time", max_tokens=5, stream=True))
    assert streamed == r.choices[0].text


def test_models(client):
    assert [m.id for m in client.models.list()] == [SERVED_NAME]


@pytest.mark.parametrize("image", [None, "wide_1000x600.png"])
def test_http_greedy_equals_phive_run(client, image):
    prompt = "What is in this picture?" if image else "Describe a sunset over the ocean in two sentences."
    args = [str(PHIVE), "run", "-m", str(MODEL), "-p", prompt, "--max-tokens", "16"]
    if image:
        args += ["--image", str(IMAGES / image)]
        messages = with_image(str(IMAGES / image), prompt)
    else:
        messages = [{"role": "user", "content": prompt}]
    run = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.endswith("\n")
    assert answer(client, messages, max_tokens=16) == run.stdout[:-1]


@pytest.mark.parametrize("name", ["one_audio", "image_and_audio"])
def test_phi4_audio_input_matches_golden(phi4_server, name):
    """Phi-4-multimodal over HTTP: OpenAI's input_audio (base64 + format) and an image as a data
    URL; the server routes the adapter and answers exactly as the reference."""
    root = MODEL.parents[2]
    goldens = json.loads((root / "tests/fixtures/goldens/phi4mm/generation.json").read_text())
    case = next(c for c in goldens["cases"] if c["name"] == name)
    *history, last = case["messages"]
    parts = []
    for path in case["images"]:
        data = base64.b64encode((root / path).read_bytes()).decode()
        parts.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}})
    for path in case["audios"]:
        data = base64.b64encode((root / path).read_bytes()).decode()
        parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    parts.append({"type": "text", "text": last["content"]})
    res = phi4_server.client().chat.completions.create(
        model="default", messages=history + [{"role": "user", "content": parts}], max_tokens=16, temperature=0
    )
    assert res.choices[0].message.content == case["greedy_text"]
    assert res.usage.prompt_tokens == case["num_tokens"]


def test_next_turn_reports_cached_prompt_tokens(client):
    """The next turn of a chat resends the conversation; its shared prefix comes from the cache,
    in OpenAI's usage.prompt_tokens_details.cached_tokens, streamed or not."""
    turn = with_image(f"data:image/png;base64,{image_b64('shapes_640x480.png')}", "Describe it.")
    first = client.chat.completions.create(model=SERVED_NAME, messages=turn, max_tokens=6)
    turn += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "What colour is the largest shape?"}]
    second = client.chat.completions.create(model=SERVED_NAME, messages=turn, max_tokens=6)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens
    assert cached >= first.usage.prompt_tokens - 16, "the whole first turn is reused"
    stream = client.chat.completions.create(model=SERVED_NAME, messages=turn, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True})
    usage = list(stream)[-1].usage
    assert usage.prompt_tokens_details.cached_tokens >= cached


def test_crop_limits_through_extra_body(phi4_server):
    """Phi-4's dynamic_hd as the openai client sends extra fields (top level, or vLLM's
    mm_processor_kwargs): the Hub processor's token counts; Phi-3.5's num_crops is a 400."""
    limits = json.loads((GOLDENS.parents[1] / "crop_limits.json").read_text())["phi4mm"]
    tokens = {c["dynamic_hd"]: c["num_image_tokens"] for c in limits if c["size"] == [1000, 600]}
    messages = with_image(f"data:image/png;base64,{image_b64('wide_1000x600.png')}")
    client = phi4_server.client()

    def prompt_tokens(extra):
        r = client.chat.completions.create(model="default", messages=messages, max_tokens=1, extra_body=extra)
        return r.usage.prompt_tokens

    base = prompt_tokens({})
    assert prompt_tokens({"dynamic_hd": 4}) - base == tokens[4] - tokens[36]
    assert prompt_tokens({"mm_processor_kwargs": {"dynamic_hd": 1}}) - base == tokens[1] - tokens[36]
    with pytest.raises(openai.BadRequestError) as e:
        prompt_tokens({"num_crops": 16})
    assert e.value.param == "num_crops" and "Phi-3.5-vision only" in e.value.message
