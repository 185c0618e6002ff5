# mistral.rs's examples/python/phi3v_local_img.py with the import line changed. The model and
# the image file can be overridden with PHIVE_MODEL / PHIVE_IMAGE_FILE.
import os

from phive import Runner, Which, ChatCompletionRequest, VisionArchitecture

MODEL_ID = os.environ.get("PHIVE_MODEL", "microsoft/Phi-3.5-vision-instruct")

runner = Runner(
    which=Which.VisionPlain(
        model_id=MODEL_ID,
        arch=VisionArchitecture.Phi3V,
    ),
)

FILENAME = os.environ.get("PHIVE_IMAGE_FILE", "picture.jpg")

res = runner.send_chat_completion_request(
    ChatCompletionRequest(
        model="default",
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": FILENAME,
                        },
                    },
                    {
                        "type": "text",
                        "text": "<|image_1|>\nWhat is shown in this image? Write a detailed response analyzing the scene.",
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
