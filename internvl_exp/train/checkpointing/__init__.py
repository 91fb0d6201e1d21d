"""Work that survives a crash: checkpoints marked complete, the resume plan, preemption by signal."""
