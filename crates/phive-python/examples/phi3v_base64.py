# mistral.rs's examples/python/phi3v_base64.py with the import line changed. The model and the
# image file can be overridden with PHIVE_MODEL / PHIVE_IMAGE_FILE.
import os

from phive import Runner, Which, ChatCompletionRequest, VisionArchitecture
import base64

MODEL_ID = os.environ.get("PHIVE_MODEL", "microsoft/Phi-3-vision-128k-instruct")

runner = Runner(
    which=Which.VisionPlain(
        model_id=MODEL_ID,
        tokenizer_json=None,
        repeat_last_n=64,
        arch=VisionArchitecture.Phi3V,
    ),
)

FILENAME = os.environ.get("PHIVE_IMAGE_FILE", "picture.jpg")
with open(FILENAME, "rb") as image_file:
    encoded_string = base64.b64encode(image_file.read()).decode("utf-8")

res = runner.send_chat_completion_request(
    ChatCompletionRequest(
        model="phi3v",
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": str(encoded_string),
                        },
                    },
                    {
                        "type": "text",
                        "text": "<|image_1|>\nWhat is shown in this image?",
                    },
                ],
            }
        ],
        max_tokens=256,
        presence_penalty=1.0,
        top_p=0.1,
        temperature=0.1,
    )
)
print(res.choices[0].message.content)
print(res.usage)
