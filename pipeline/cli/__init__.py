"""The `facestream` command line: `main` builds the parser; one module per command group;
`runner` maps errors to exit codes."""
