"""Frames in, events out: messages, sources, stages, tracker, sinks and the command line."""
