"""The run recipe and its Trainer: run.py reads top to bottom (setup, train, save, summarise); the Trainer
subclass, TrainingArguments mapping, callbacks, loss, eval and the DeepSpeed environment it needs."""
