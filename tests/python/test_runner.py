"""The Python SDK against the tiny Phi-3.5-vision fixture: exact greedy answers, every image
source, streaming, sampling parameters, usage, quantization and concurrency."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import phive
from phive import ChatCompletionRequest, Runner, VisionArchitecture, Which
from sdk_paths import IMAGES, MODEL, REPO

QUESTION = "What is in this picture?"
IMAGE = IMAGES / "wide_1000x600.png"


def image_message(url: str, text: str = QUESTION):
    # The golden case one_image: the image part before the text.
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
        }
    ]


def greedy(runner, messages, max_tokens: int = 16, **kwargs) -> str:
    res = runner.send_chat_completion_request(
        ChatCompletionRequest(model="default", messages=messages, max_tokens=max_tokens, temperature=0.0, **kwargs)
    )
    return res.choices[0].message.content


def image_sources(server: str):
    data = IMAGE.read_bytes()
    b64 = base64.b64encode(data).decode()
    return {
        "path": str(IMAGE),
        "file_url": IMAGE.as_uri(),
        "http_url": server + IMAGE.name,
        "base64": b64,
        "data_url": "data:image/png;base64," + b64,
    }


@pytest.mark.parametrize("source", ["path", "file_url", "http_url", "base64", "data_url"])
def test_greedy_answer_matches_golden_for_every_image_source(runner, golden_cases, image_server, source):
    case = golden_cases["one_image"]
    assert case["openai_messages"] == image_message(IMAGE.name)  # the golden's request, image aside
    url = image_sources(image_server)[source]
    assert greedy(runner, image_message(url)) == case["greedy_text"]


def test_user_written_image_tag_gives_the_same_prompt(runner, golden_cases):
    # mistral.rs's examples write "<|image_1|>\n" themselves; phive must not add a second tag.
    text = greedy(runner, image_message(str(IMAGE), "<|image_1|>\n" + QUESTION))
    assert text == golden_cases["one_image"]["greedy_text"]


def test_text_only_greedy_matches_golden(runner, golden_cases):
    case = golden_cases["text"]
    assert greedy(runner, case["openai_messages"]) == case["greedy_text"]


def test_bf16_language_model_keeps_the_golden_answer(golden_cases):
    case = golden_cases["one_image"]
    bf16 = Runner(which=Which.VisionPlain(model_id=str(MODEL), dtype="bf16"))
    messages = image_message(str(IMAGE))
    assert greedy(bf16, messages) == case["greedy_text"]
    with pytest.raises(phive.InvalidRequestError) as info:
        Runner(which=Which.VisionPlain(model_id=str(MODEL)), device="tpu")
    assert info.value.param == "device" and "expected cpu, cuda or cuda:N" in str(info.value)


def test_same_answer_as_phive_run(runner, golden_cases):
    binary = REPO / "target" / "release" / "phive"
    if not binary.exists():
        binary = Path(shutil.which("phive") or "")
    if not binary.is_file():
        pytest.skip("the phive CLI is not built (cargo build --release -p phive-cli)")
    out = subprocess.run(
        [str(binary), "run", "-m", str(MODEL), "-p", QUESTION, "--image", str(IMAGE), "--max-tokens", "16"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert out.rstrip("\n") == greedy(runner, image_message(str(IMAGE))) == golden_cases["one_image"]["greedy_text"]


def test_response_shape_and_usage(runner):
    res = runner.send_chat_completion_request(
        ChatCompletionRequest(model="anything", messages=image_message(str(IMAGE)), max_tokens=8)
    )
    assert isinstance(res, phive.ChatCompletionResponse)
    assert res.object == "chat.completion" and res.id.startswith("chatcmpl-")
    assert res.choices[0].message.role == "assistant" and res.choices[0].finish_reason == "length"
    u = res.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (770, 8, 778)
    assert u.avg_prompt_tok_per_sec > 0 and u.avg_compl_tok_per_sec > 0 and u.avg_tok_per_sec > 0
    assert 0 < u.total_prompt_time_sec <= u.total_time_sec
    assert 0 < u.total_completion_time_sec <= u.total_time_sec
    assert res.timings is not None and res.timings.image_tokens == 757
    assert res.to_dict()["usage"]["total_tokens"] == 778


def test_streaming_matches_non_streamed_text(runner, golden_cases):
    stream = runner.send_chat_completion_request(
        ChatCompletionRequest(messages=image_message(str(IMAGE)), max_tokens=16, temperature=0.0, stream=True)
    )
    assert isinstance(stream, phive.ChatCompletionStream)
    chunks = list(stream)
    assert all(len(c.choices) == 1 for c in chunks)  # chunk.choices[0] is always valid
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length" and last.choices[0].delta.content == ""
    assert last.usage is not None and last.usage.completion_tokens == 16 and last.usage.prompt_tokens == 770
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == golden_cases["one_image"]["greedy_text"]


def test_stop_strings_and_alias(runner, golden_cases):
    full = golden_cases["text"]["greedy_text"]
    messages = golden_cases["text"]["openai_messages"]
    stop = full[10:16]
    for kwargs in ({"stop_seqs": [stop]}, {"stop": stop}):
        res = runner.send_chat_completion_request(
            ChatCompletionRequest(messages=messages, max_tokens=16, temperature=0.0, **kwargs)
        )
        assert res.choices[0].message.content == full[: full.index(stop)]
        assert res.choices[0].finish_reason == "stop"


def test_sampling_parameters_and_seed(runner):
    def sample(seed):
        return runner.send_chat_completion_request(
            ChatCompletionRequest(
                messages=[{"role": "user", "content": "Hello"}],
                max_tokens=12,
                temperature=0.9,
                top_p=0.95,
                top_k=50,
                min_p=0.01,
                frequency_penalty=0.3,
                presence_penalty=0.2,
                repetition_penalty=1.1,
                seed=seed,
            )
        ).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1


def test_n_choices_and_logprobs(runner):
    res = runner.send_chat_completion_request(
        ChatCompletionRequest(
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=5,
            temperature=1.0,
            seed=3,
            n_choices=2,
            logprobs=True,
            top_logprobs=2,
        )
    )
    assert [c.index for c in res.choices] == [0, 1]
    assert res.usage.completion_tokens == 10
    for choice in res.choices:
        entries = choice.logprobs.content
        assert len(entries) == 5
        assert all(len(e.top_logprobs) == 2 and e.logprob <= 0.0 for e in entries)
        # Whitespace aside (see the next test), the tokens spell the content.
        assert "".join(e.token for e in entries).replace(" ", "") == choice.message.content.replace(" ", "")


def test_logprob_tokens_concatenate_to_content(runner):
    res = runner.send_chat_completion_request(
        ChatCompletionRequest(messages=[{"role": "user", "content": "Hello"}], max_tokens=8, logprobs=True)
    )
    choice = res.choices[0]
    assert "".join(e.token for e in choice.logprobs.content) == choice.message.content


def test_runner_seed_is_the_default_request_seed():
    which = Which.VisionPlain(model_id=str(MODEL))
    a, b = Runner(which=which, seed=11), Runner(which=which, seed=11)
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=10, temperature=1.0)
    first = a.send_chat_completion_request(request).choices[0].message.content
    assert b.send_chat_completion_request(request).choices[0].message.content == first


def test_f16_kv_cache_holds_twice_the_tokens_in_the_same_memory():
    which = Which.VisionPlain(model_id=str(MODEL))
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    blocks = {}
    for dtype, isq in (("f32", None), ("f16", None), (None, None), (None, "Q8_0")):
        r = Runner(which=which, kv_cache_mem=0.01, kv_cache_dtype=dtype, in_situ_quant=isq)
        assert r.send_chat_completion_request(request).usage.completion_tokens == 8
        stats = r.stats()
        blocks[dtype or f"auto, {isq}"] = stats["kv_blocks_free"] + stats["kv_blocks_used"]
    assert blocks["f16"] == 2 * blocks["f32"]
    # By default ("auto") the exact f32 model keeps an f32 cache, a quantized one an f16 cache.
    assert blocks["auto, None"] == blocks["f32"] and blocks["auto, Q8_0"] == blocks["f16"]


def test_solo_prefill_chunk_sets_the_steps_of_a_prompt_alone():
    which = Which.VisionPlain(model_id=str(MODEL))
    prompt = [{"role": "user", "content": "The keeper counted the waves. " * 60}]
    answers, steps = {}, {}
    for chunk in (0, 1024):
        r = Runner(which=which, max_batched_tokens=16, solo_prefill_chunk=chunk)
        answers[chunk] = greedy(r, prompt, max_tokens=4)
        steps[chunk] = r.stats()["steps"]
    assert answers[0] == answers[1024]
    # Off: the ~430-token prompt advances 8 tokens a step; on: it runs in one step, then three
    # decode steps follow.
    assert steps[0] > 40 and steps[1024] == 4, steps


def test_runner_properties(runner):
    assert runner.architecture is VisionArchitecture.Phi3V
    assert runner.model_id == str(MODEL)
    assert runner.max_sequence_length() == 131072
    assert runner.in_situ_quant is None
    assert set(runner.stats()) == {
        "queued", "active", "cancelled", "running_seqs", "waiting_seqs", "preemptions", "steps",
        "max_batch_size", "kv_blocks_used", "kv_blocks_free", "media_cache_hits", "media_cache_misses",
        "prefix_cache_blocks", "prefix_cache_queried_tokens", "prefix_cache_hit_tokens", "kv_block_size",
        "interrupted_steps",
    }
    assert repr(runner).startswith("Runner(model_id=") and "Phi3V" in repr(runner)


def test_architecture_is_auto_detected_and_aliases_work():
    r = Runner(which=Which.MultimodalPlain(model_id=str(MODEL), arch="phi3v"))
    assert r.architecture is phive.MultimodalArchitecture.Phi3V
    assert Runner(which=Which.VisionPlain(model_id=str(MODEL))).architecture is VisionArchitecture.Phi3V


@pytest.mark.parametrize("isq", ["Q4K", "q8_0", "4"])
def test_in_situ_quant(isq, golden_cases):
    r = Runner(which=Which.VisionPlain(model_id=str(MODEL), arch=VisionArchitecture.Phi3V), in_situ_quant=isq)
    assert r.in_situ_quant == {"Q4K": "Q4K", "q8_0": "Q8_0", "4": "Q4K"}[isq]
    text = greedy(r, golden_cases["text"]["openai_messages"])
    assert isinstance(text, str) and text


def test_concurrent_requests_from_threads():
    r = Runner(which=Which.VisionPlain(model_id=str(MODEL)), max_seqs=2)
    results = {}

    def work(i):
        results[i] = greedy(r, [{"role": "user", "content": "Hello"}], max_tokens=20)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 4 and len(set(results.values())) == 1
    # Calls from several threads share the engine's steps, and every KV block comes back (the
    # engine publishes its state just after the step that sent the last answer).
    assert r.stats()["max_batch_size"] >= 2, r.stats()
    deadline = time.monotonic() + 10
    while r.stats()["kv_blocks_used"] or r.stats()["running_seqs"]:
        assert time.monotonic() < deadline, r.stats()
        time.sleep(0.01)


def test_gil_is_released_while_generating(runner):
    done = threading.Event()
    error = []

    def generate():
        try:
            greedy(runner, [{"role": "user", "content": "Hello"}], max_tokens=1500)
        except BaseException as e:  # noqa: BLE001 (reported below)
            error.append(e)
        finally:
            done.set()

    worker = threading.Thread(target=generate)
    started = time.perf_counter()
    worker.start()
    spins = 0
    while not done.is_set():
        spins += 1  # pure Python: only runs while the generating thread has released the GIL
    elapsed = time.perf_counter() - started
    worker.join()
    assert not error, error
    assert elapsed > 0.2, "generation too short to tell"
    # Python spins millions of times a second; with the GIL held by generation it would barely run.
    assert spins > 20_000 * elapsed, (spins, elapsed)


def test_type_stubs_ship_with_the_package():
    package = Path(phive.__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_phive.pyi").is_file()
    for name in ("Runner", "Which", "ChatCompletionRequest", "VisionArchitecture", "PhiveError"):
        assert name in phive.__all__


def test_version():
    assert phive.__version__ and os.path.basename(phive.__file__) == "__init__.py"


def _next_turn_usage(runner, system: str):
    """Asks twice with the same long system prompt; returns both answers' usage and texts."""
    out = []
    for question in ("What is a lighthouse?", "And who keeps it?"):
        request = ChatCompletionRequest(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=6,
        )
        r = runner.send_chat_completion_request(request)
        out.append((r.usage, r.choices[0].message.content))
    return out


def test_prefix_cache_reports_cached_tokens_and_can_be_turned_off():
    system = "You are a patient guide who explains the sea to children. " * 8
    which = Which.VisionPlain(model_id=str(MODEL))
    cached = Runner(which=which)
    (first, a1), (second, a2) = _next_turn_usage(cached, system)
    assert first.prompt_tokens_details.cached_tokens == 0
    hit = second.prompt_tokens_details.cached_tokens
    assert 0 < hit < second.prompt_tokens and hit % cached.stats()["kv_block_size"] == 0
    assert cached.stats()["prefix_cache_hit_tokens"] == hit
    assert second.to_dict()["prompt_tokens_details"] == {"cached_tokens": hit}
    for off in (Runner(which=which, no_prefix_cache=True), Runner(which=which, prefix_cache_n=0)):
        (u1, b1), (u2, b2) = _next_turn_usage(off, system)
        assert u1.prompt_tokens_details.cached_tokens == u2.prompt_tokens_details.cached_tokens == 0
        assert (b1, b2) == (a1, a2), "the cache never changes an answer"
        assert off.stats()["prefix_cache_blocks"] == 0
