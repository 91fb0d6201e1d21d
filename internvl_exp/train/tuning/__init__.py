"""What trains and how: freeze/LoRA per part, drop-path, optimizer parameter groups and the schedule."""
