"""Jinja chat templates that render exactly the prompt text of data/templates.py.

`processor.apply_chat_template(messages)` then builds, for inference, the same text the model was trained
on. Messages are transformers' format: `role` user/assistant (an optional system turn first) and
`content` either a string (our training format: `<image>` marks an image) or a list of parts
`{"type": "text", "text": ...}` / `{"type": "image", ...}`; an image part is written as `<image>\\n`,
InternVL's convention for an image at the start of a turn.

Each image is written as `image_token`, by default `<IMG_CONTEXT>`: that is the placeholder transformers'
`InternVLProcessor` expands to `<img>` + `<IMG_CONTEXT>` * (tiles x tokens per tile) + `</img>`, exactly
the span our dataset puts for an `<image>`. (With `image_token="<image>"` the text equals templates.py's
`render` byte for byte.) No BOS is written: the tokenizer adds it, as it does in training.
"""

from __future__ import annotations

import json

from internvl_exp.data.templates import IMAGE_PLACEHOLDER, IMG_CONTEXT, get_template


def _lit(text: str) -> str:
    """A Jinja string literal (Jinja unescapes like Python; JSON's escapes are a subset)."""
    return json.dumps(text, ensure_ascii=False)


def chat_template(template: str, image_token: str = IMG_CONTEXT, system_message: str | None = None) -> str:
    """The Jinja chat template of the named conversation template (internvl2_5, internlm2-chat, ...).

    `system_message` replaces the template's default system message, as `data.system_message` does in
    training; a system turn in the messages still wins over both.
    """
    tpl = get_template(template)
    default_system = tpl.system_message if system_message is None else system_message
    if "{system_message}" not in tpl.system_template:
        raise ValueError(f"template {template!r}: system_template has no {{system_message}} field")
    sys_prefix, sys_suffix = tpl.system_template.split("{system_message}", 1)
    eot = tpl.end_of_turn + tpl.turn_suffix
    strip = "| trim " if tpl.strip_values else ""
    # One content renderer for every turn: a string is our training value (its `<image>` marks become
    # image_token); a list of parts is transformers' multimodal format.
    lines = [
        f"{{#- {tpl.name}: the prompt text of internvl_exp.data.templates; each image is {image_token} -#}}",
        "{%- macro content(message) -%}",
        "  {%- if message['content'] is string -%}",
        f"    {{{{- message['content'] | replace({_lit(IMAGE_PLACEHOLDER)}, {_lit(image_token)}) -}}}}",
        "  {%- else -%}",
        "    {%- for part in message['content'] -%}",
        "      {%- if part['type'] == 'text' -%}",
        "        {{- part['text'] -}}",
        "      {%- elif part['type'] == 'image' -%}",
        f"        {{{{- {_lit(image_token + chr(10))} -}}}}",
        "      {%- else -%}",
        "        {{- raise_exception('this chat template takes text and image parts, not ' ~ part['type']"
        " ~ ' (give the frames of a video as images)') -}}",
        "      {%- endif -%}",
        "    {%- endfor -%}",
        "  {%- endif -%}",
        "{%- endmacro -%}",
        f"{{%- set ns = namespace(system={_lit(default_system)}, first=0) -%}}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "  {%- set ns.system = content(messages[0]) -%}",
        "  {%- set ns.first = 1 -%}",
        "{%- endif -%}",
        f"{{{{- {_lit(sys_prefix)} + ns.system + {_lit(sys_suffix + eot)} -}}}}",
        "{%- for message in messages[ns.first:] -%}",
        f"  {{%- set text = content(message) {strip}-%}}",
        "  {%- if message['role'] == 'user' -%}",
        f"    {{{{- {_lit(tpl.user_prefix)} + text + {_lit(eot)} -}}}}",
        "  {%- elif message['role'] == 'assistant' -%}",
        f"    {{{{- {_lit(tpl.assistant_prefix)} -}}}}",
        # What training supervises (answer + end of turn) is the generation block, so
        # `return_assistant_tokens_mask=True` marks exactly the tokens that carry loss.
        f"    {{%- generation -%}}{{{{- text + {_lit(tpl.end_of_turn)} -}}}}{{%- endgeneration -%}}",
        f"    {{{{- {_lit(tpl.turn_suffix)} -}}}}",
        "  {%- else -%}",
        "    {{- raise_exception('unexpected role ' ~ message['role'] ~ ': use user/assistant, and system only first') -}}",
        "  {%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}",
        f"  {{{{- {_lit(tpl.assistant_prefix)} -}}}}",
        "{%- endif -%}",
    ]
    # Every tag trims the whitespace around it, so the indentation and newlines above never reach the output.
    return "\n".join(lines) + "\n"
