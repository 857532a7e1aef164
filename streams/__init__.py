"""The Faust app, topics, agents and the CLI: thin adapters around processors and sinks."""
