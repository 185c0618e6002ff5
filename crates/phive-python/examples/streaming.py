# mistral.rs's examples/python/streaming.py with the import line changed and, since phive runs
# vision-language models, Which.VisionPlain instead of Which.GGUF. The model can be overridden
# with PHIVE_MODEL.
import os

from phive import Runner, Which, ChatCompletionRequest

MODEL_ID = os.environ.get("PHIVE_MODEL", "microsoft/Phi-3.5-vision-instruct")

runner = Runner(
    which=Which.VisionPlain(
        model_id=MODEL_ID,
    )
)

res = runner.send_chat_completion_request(
    ChatCompletionRequest(
        model="default",
        messages=[
            {"role": "user", "content": "Tell me a story about the Rust type system."}
        ],
        max_tokens=256,
        presence_penalty=1.0,
        top_p=0.1,
        temperature=0.1,
        stream=True,
    )
)
for chunk in res:
    print(chunk)
