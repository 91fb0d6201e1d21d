"""What a run tells people: the console header, the loss windows, the parameter report, tracker loggers."""
