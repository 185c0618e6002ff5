"""API keys through the official client: the key given to `openai.OpenAI(api_key=...)` is what
`phive serve --api-key-file` (or PHIVE_API_KEY, or --api-key) checks."""

import json
import urllib.error
import urllib.request

import openai
import pytest

from conftest import Server

KEY = "sk-phive-http-test"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-keyed")
    keys = tmp / "keys.txt"
    keys.write_text(f"# one key per line\n{KEY}\n")
    s = Server(tmp, "--api-key-file", str(keys))
    yield s
    s.stop()


def test_the_right_key_is_served(keyed_server):
    client = openai.OpenAI(base_url=keyed_server.base + "/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(
        model="phi3v-tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert reply.choices[0].message.content is not None


def test_a_wrong_key_is_401_in_openai_shape(keyed_server):
    client = openai.OpenAI(base_url=keyed_server.base + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


def test_health_needs_no_key_and_metrics_do(keyed_server):
    with urllib.request.urlopen(keyed_server.base + "/health") as r:
        assert json.load(r)["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(keyed_server.base + "/metrics")
    assert raised.value.code == 401
