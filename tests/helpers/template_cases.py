"""Chats and golden-file paths shared by the template and rendering tests."""

from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
OFFICIAL = GOLDEN / "official"
SHIPPED = ["chatml", "gemma", "llama-2", "llama-3", "mistral", "vicuna_v1.1", "zephyr"]

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CHAT = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 = 4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "4 * 3 = 12.\nDone."},
]
# A ToRA-style math chat: the executed code's output comes back as a user turn and must not be trained on.
MATH_CHAT = [
    {"role": "user", "content": "What is 12 * 7 + 5?"},
    {"role": "assistant", "content": "Let's compute it.\n```python\nprint(12 * 7 + 5)\n```"},
    {"role": "user", "content": "```output\n89\n```"},
    {"role": "assistant", "content": "The answer is $\\boxed{89}$."},
]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
    {"role": "tool", "content": '{"temperature": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
]
