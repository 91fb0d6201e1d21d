"""The named choices a config may make where the schema types them as plain strings: the model parts a freeze
strategy sets a mode for, those modes, and the conversation templates. The modules that implement the choices
(models/registry.py, data/templates.py) take these names from here, so validation needs nothing heavier.
"""

from __future__ import annotations

PARTS = ("vision", "projector", "llm", "lm_head")
PART_MODES = ("frozen", "full", "lora")  # how a part trains (the `freeze` group)

# The conversation templates data/templates.py implements (it checks, at import, that it implements these).
TEMPLATE_NAMES = ("internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat")
# Official conversation templates a preset names that data/templates.py does not implement yet.
PLANNED_TEMPLATES = ("internvl3_5_gpt_oss",)
