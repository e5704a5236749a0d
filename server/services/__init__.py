"""The logic behind each resource; testable without a socket."""
