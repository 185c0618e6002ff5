"""Errors surface as phive exceptions carrying the engine's message, the field at fault and a code."""

from __future__ import annotations

import json

import pytest

import phive
from phive import (
    ChatCompletionRequest,
    InvalidRequestError,
    MediaError,
    ModelNotFoundError,
    PhiveError,
    Runner,
    VisionArchitecture,
    Which,
)
from sdk_paths import FIXTURES, IMAGES, MODEL


def ask(runner, **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": "Hello"}])
    kwargs.setdefault("max_tokens", 4)
    return runner.send_chat_completion_request(ChatCompletionRequest(**kwargs))


def image_request(url):
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}],
        }
    ]


def test_hierarchy():
    assert issubclass(InvalidRequestError, ValueError) and issubclass(InvalidRequestError, PhiveError)
    assert issubclass(MediaError, InvalidRequestError)
    assert issubclass(ModelNotFoundError, phive.ModelLoadError)
    assert issubclass(phive.UnsupportedArchitectureError, phive.ModelLoadError)
    for cls in (phive.EngineBusyError, phive.InternalError, phive.ModelLoadError):
        assert issubclass(cls, PhiveError)


def test_missing_image_file(runner):
    missing = IMAGES / "does_not_exist.png"
    with pytest.raises(MediaError) as info:
        ask(runner, messages=image_request(str(missing)))
    assert "image 1" in str(info.value) and "does_not_exist.png" in str(info.value)
    assert info.value.code == "invalid_image" and info.value.param == "messages"


def test_undecodable_image(runner, tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is not a PNG file at all")
    with pytest.raises(MediaError, match="image 1"):
        ask(runner, messages=image_request(str(bad)))


def test_bad_base64_image(runner):
    with pytest.raises(MediaError, match="image 1"):
        ask(runner, messages=image_request("data:image/png;base64,!!!not-base64!!!"))


def test_unreachable_image_url(runner, image_server):
    with pytest.raises(MediaError, match="404|not found|Not Found"):
        ask(runner, messages=image_request(image_server + "missing.png"))


@pytest.mark.parametrize(
    "kwargs, param, words",
    [
        ({"temperature": 5.0}, "temperature", "temperature must be between 0 and 2"),
        ({"top_p": 0.0}, "top_p", "top_p must be in (0, 1]"),
        ({"top_k": 0}, "top_k", "top_k must be at least 1"),
        ({"min_p": 2.0}, "min_p", "min_p must be between 0 and 1"),
        ({"presence_penalty": 9.0}, "presence_penalty", "presence_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty", "repetition_penalty"),
        ({"n_choices": 0}, "n", "n must be between 1 and 16"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens must be at least 1"),
        ({"top_logprobs": 3}, "top_logprobs", "top_logprobs requires logprobs"),
        ({"stop_seqs": [""]}, "stop", "stop strings must be 1 to"),
        ({"temperature": "hot"}, "temperature", "invalid value for temperature"),
        ({"max_tokens": -1}, "max_tokens", "invalid value for max_tokens"),
        ({"logit_bias": {1: 500.0}}, "logit_bias", "logit_bias values must be numbers between -100 and 100"),
    ],
)
def test_bad_parameters(runner, kwargs, param, words):
    with pytest.raises(InvalidRequestError) as info:
        ask(runner, **kwargs)
    assert words in str(info.value)
    assert info.value.param == param
    with pytest.raises(ValueError):
        ask(runner, **kwargs)


@pytest.mark.parametrize(
    "messages, words",
    [
        ([], "at least one message"),
        ("Hello", "messages must be a list"),
        ([{"role": "robot", "content": "hi"}], "unsupported role"),
        ([{"role": "user"}], "needs content"),
        ([{"role": "user", "content": [{"type": "video_url"}]}], "unknown content part type"),
        ([{"role": "user", "content": [{"type": "text", "text": object()}]}], "JSON values"),
        ([{"role": "user", "content": "<|image_1|> what?"}], "image"),
    ],
)
def test_bad_messages(runner, messages, words):
    with pytest.raises(InvalidRequestError, match=None) as info:
        ask(runner, messages=messages)
    assert words in str(info.value), str(info.value)


def test_audio_is_refused_for_phi3v(runner):
    wav = FIXTURES / "audio" / "tone_16k.wav"
    import base64

    audio = {"data": base64.b64encode(wav.read_bytes()).decode(), "format": "wav"}
    with pytest.raises(InvalidRequestError) as info:
        ask(runner, messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}])
    assert "audio" in str(info.value) and "Phi-3.5-vision" in str(info.value)
    assert info.value.code == "unsupported_modality"


@pytest.mark.parametrize(
    "kwargs",
    [{"web_search_options": {}}, {"enable_thinking": True}, {"dry_multiplier": 0.8}],
)
def test_unsupported_request_options_are_refused(runner, kwargs):
    with pytest.raises(InvalidRequestError) as info:
        ask(runner, **kwargs)
    assert "not supported by phive" in str(info.value) and info.value.code == "unsupported_parameter"


def test_stop_and_stop_seqs_together(runner):
    with pytest.raises(InvalidRequestError, match="not both"):
        ask(runner, stop="a", stop_seqs=["b"])


def test_prompt_longer_than_context(runner):
    with pytest.raises(InvalidRequestError) as info:
        ask(runner, messages=[{"role": "user", "content": "word " * 140_000}])
    assert "context length" in str(info.value) and info.value.code == "context_length_exceeded"


def test_missing_model(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(PhiveError) as info:
        Runner(which=Which.VisionPlain(model_id=str(missing), arch=VisionArchitecture.Phi3V))
    assert str(missing) in str(info.value) or "no-such-model" in str(info.value)
    assert isinstance(info.value, phive.ModelLoadError)


def test_missing_hub_model_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        Runner(which=Which.VisionPlain(model_id="nobody/no-such-model-xyz"))
    assert "nobody/no-such-model-xyz" in str(info.value) and info.value.code == "model_not_found"


def test_checkpoint_missing_a_file(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in MODEL.iterdir():
        if f.name != "tokenizer.json":
            (broken / f.name).symlink_to(f)
    with pytest.raises(phive.ModelLoadError, match="tokenizer.json"):
        Runner(which=Which.VisionPlain(model_id=str(broken)))


def test_unsupported_architecture(tmp_path):
    other = tmp_path / "llava"
    other.mkdir()
    for f in MODEL.iterdir():
        if f.name != "config.json":
            (other / f.name).symlink_to(f)
    config = json.loads((MODEL / "config.json").read_text())
    config["architectures"] = ["LlavaForConditionalGeneration"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(phive.UnsupportedArchitectureError) as info:
        Runner(which=Which.VisionPlain(model_id=str(other)))
    message = str(info.value)
    assert "LlavaForConditionalGeneration" in message and "Phi3VForCausalLM" in message
    assert info.value.code == "unsupported_architecture"


def test_architecture_mismatch():
    with pytest.raises(InvalidRequestError) as info:
        Runner(which=Which.VisionPlain(model_id=str(MODEL), arch=VisionArchitecture.Phi4MM))
    message = str(info.value)
    assert '"phi4mm"' in message and '"phi3v"' in message and info.value.code == "architecture_mismatch"


def test_unknown_arch_string():
    with pytest.raises(InvalidRequestError, match="unknown arch 'llava'"):
        Runner(which=Which.VisionPlain(model_id=str(MODEL), arch="llava"))


@pytest.mark.parametrize("isq", ["Q9", "fp8", ""])
def test_bad_in_situ_quant(isq):
    with pytest.raises(InvalidRequestError) as info:
        Runner(which=Which.VisionPlain(model_id=str(MODEL)), in_situ_quant=isq)
    assert "unknown ISQ type" in str(info.value) and info.value.param == "in_situ_quant"


@pytest.mark.parametrize("dtype", ["fp8", "bf16", ""])
def test_bad_kv_cache_dtype(dtype):
    with pytest.raises(InvalidRequestError) as info:
        Runner(which=Which.VisionPlain(model_id=str(MODEL)), kv_cache_dtype=dtype)
    assert "unknown KV cache dtype" in str(info.value) and info.value.param == "kv_cache_dtype"


@pytest.mark.parametrize("kwargs", [{"gpu_memory_utilization": 0.0}, {"gpu_memory_utilization": 1.5}, {"pa_gpu_mem_usage": -1.0}])
def test_bad_gpu_memory_utilization(kwargs):
    with pytest.raises(InvalidRequestError) as info:
        Runner(which=Which.VisionPlain(model_id=str(MODEL)), **kwargs)
    assert "fraction in (0, 1]" in str(info.value) and info.value.param == "gpu_memory_utilization"


@pytest.mark.parametrize(
    "which_kwargs, runner_kwargs, name",
    [
        ({"from_uqff": "x.uqff"}, {}, "from_uqff"),
        ({"tokenizer_json": "t.json"}, {}, "tokenizer_json"),
        ({"dtype": "fp8"}, {}, "dtype"),
        ({}, {"chat_template": "{{ x }}"}, "chat_template"),
        ({}, {"token_source": "literal:abc"}, "token_source"),
    ],
)
def test_unsupported_runner_options(which_kwargs, runner_kwargs, name):
    with pytest.raises(InvalidRequestError) as info:
        Runner(which=Which.VisionPlain(model_id=str(MODEL), **which_kwargs), **runner_kwargs)
    assert info.value.param == name and info.value.code == "unsupported_parameter"


def test_neutral_mistralrs_options_are_accepted():
    r = Runner(
        which=Which.VisionPlain(model_id=str(MODEL), tokenizer_json=None, repeat_last_n=64, dtype="auto"),
        max_seqs=1,
        no_kv_cache=False,
        prefix_cache_n=16,
        token_source="cache",
        no_paged_attn=True,
        pa_gpu_mem=None,
    )
    assert ask(r).choices[0].message.content


def test_runner_still_works_after_errors(runner, golden_cases):
    with pytest.raises(InvalidRequestError):
        ask(runner, temperature=9.0)
    case = golden_cases["text"]
    res = ask(runner, messages=case["openai_messages"], max_tokens=16, temperature=0.0)
    assert res.choices[0].message.content == case["greedy_text"]
