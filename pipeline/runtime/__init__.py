"""The process runtime of `facestream run`: the supervisor, stage processes, their typed messages and
socket security."""
